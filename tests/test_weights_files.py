"""Weight files a site brings: the card travels inside the file; a damaged file is named, never silently used."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.kgmgt import KGMgTConfig
from models.weights import WeightsError, build_model, load_weights, save_weights

TINY = KGMgTConfig(channels=8, depth=1, heads=2, window=8, asa_radius=1).to_dict()


def test_a_tensor_file_alone_loads_with_its_embedded_card(tmp_path):
    torch.manual_seed(0)
    path = save_weights(build_model("kgmgt", TINY), tmp_path, "site", "kgmgt", "site-1")
    path.with_suffix(".json").unlink()  # copied without its card
    model, card = load_weights(path)
    assert card["architecture"] == "kgmgt" and card["version"] == "site-1" and card["config"] == TINY


def test_a_tensor_file_without_any_card_is_named(tmp_path):
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(WeightsError, match="bare.safetensors: no card: neither bare.json"):
        load_weights(bare)


def _corrupt(tmp_path):
    torch.manual_seed(0)
    path = save_weights(build_model("kgmgt", TINY), tmp_path, "broken", "kgmgt", "b-1")
    path.write_bytes(path.read_bytes()[:200])  # a truncated download
    return path


def test_serve_refuses_a_damaged_weights_file_by_name(tmp_path, capsys):
    from pipelines.host import main as serve_main

    bad = _corrupt(tmp_path)
    assert serve_main(["--port", "0", "--kgmgt-weights", str(bad), "--no-preload-models"]) == 2
    err = capsys.readouterr().err
    assert "kgmgt_weights" in err and str(bad) in err


def test_a_damaged_file_is_named_in_every_fallback(tmp_path):
    """Under Gadgetron (no serve to refuse it) the scan still gets its images, each saying which file failed."""
    from gadgets import host_settings
    from pipelines.host import StreamHost
    from pipelines.session import SessionOptions
    from simulator.acquire import acquisitions
    from simulator.client import run_session
    from simulator.header import make_header
    from simulator.scan import phantom_scan

    bad = _corrupt(tmp_path)
    options = SessionOptions(operator=host_settings.load().with_values(kgmgt_weights=str(bad)), gadget_timeout_s=60)
    host = StreamHost("127.0.0.1", 0, options, idle_timeout_s=10.0)
    host.start_background()
    try:
        scan = phantom_scan("cine", ny=32, nx=32, frames=3, n_coils=2)
        result = run_session("127.0.0.1", host.port, header=make_header(scan), items=acquisitions(scan),
                             config_file="kgmgt_cine", timeout=60)
    finally:
        host.shutdown()
        host.server_close()
    model = [im for im in result.images if int(im.image_series_index) == 1]
    assert len(model) == 3 and all(str(bad) in str(im.meta.get("Fallback")) for im in model), \
        [im.meta.get("Fallback") for im in model]
    assert np.isfinite(np.asarray(model[0].data)).all()
