"""The model registry and the model-gadget base: one home per model, and a third model served by every backend.

The third model is the dual U-Net baseline (``models/dual_unet_cine.py``):
registered by importing that module, selected by one pipeline XML
(``tests/fixtures/dual_unet_cine.xml``), and served in process, by the ZeroMQ
service and by Triton with no change to a gadget, server or client.
"""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from gadgets import host_settings
from gadgets.cine_kgmgt import KGMgTStream
from gadgets.frames import FrameAccumulator
from gadgets.inference import InProcessBackend
from gadgets.multicontrast import SGFMRIStream
from models import registry
from models.inference import load_model
from models.masks import line_mask
from models.weights import build_model, read_card, save_weights
from simulator.acquire import acquisitions, exam_acquisitions
from simulator.client import run_session
from simulator.header import make_header
from tests.dl_support import (ROOT, operate, pixels, series, start_service, start_triton, stop, stop_group,
                              tiny_weights, triton_python)
from tests.streams import small_cine
from tests.test_dl_multicontrast import brain

THIRD = "dual_unet_cine"
XML = (ROOT / "tests" / "fixtures" / "dual_unet_cine.xml").read_text()  # in no host search folder: sent as text


# ------------------------------------------------------------------------------------------ the registry
def test_builtin_models_answer_their_operations_and_load_from_their_cards(tmp_path):
    assert registry.default_model("cine") == "kgmgt" and registry.default_model("pair") == "sgfmri"
    assert {"kgmgt", "sgfmri"} <= set(registry.served())
    assert "dual_unet_resnet3d" in registry.names() and "dual_unet_resnet3d" not in registry.served()
    kgmgt = registry.get("kgmgt")
    assert kgmgt.weights_path() == registry.SHIPPED_DIR / "kgmgt_cine_rt.safetensors"
    assert kgmgt.spec.shape("frames", 2, 4, 16, 12) == (2, 3, 16, 12)
    assert registry.get("sgfmri").spec.item_shape("target") == (-1, -1)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already registered"):  # a second model cannot take a name
        registry.register(registry.ModelEntry("kgmgt", "pair", kgmgt.build))
    with pytest.raises(ValueError, match="not served"):  # a training-only network is no inference model
        load_model("dual_unet_resnet3d", allow_random=True)
    # a weights card's architecture is a registry name: the card alone rebuilds the network
    weights = tiny_weights(tmp_path)
    assert read_card(weights["sgfmri"])["architecture"] == "sgfmri"
    rec = load_model("sgfmri", weights=weights["sgfmri"])
    assert rec.info["operation"] == "pair" and rec.info["version"] == "tiny-test-1"


def test_pipelines_name_no_model():
    """Servers and clients dispatch on the request's model and operation: no model name in their code."""
    names = set(registry.names())
    for path in sorted((ROOT / "pipelines").glob("*.py")):
        named = {n.value for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names}
        assert not named, f"{path.name} names {sorted(named)}"


def test_a_gadget_refuses_a_model_of_another_operation(stream_host, monkeypatch, tmp_path):
    scan = small_cine(slices=1, frames=3, coils=4, ny=32, nx=32)
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan),
                         config_text=XML.replace(f'value="{THIRD}"', 'value="sgfmri"'),
                         items=acquisitions(scan, line_mask("kt-uniform", 32, 3, accel=4, acs=4), calib_lines=(8, 24)))
    assert any("'sgfmri' answers 'pair'" in t for t in result.texts), result.texts


def test_multicontrast_coil_map_cache_is_bounded_by_max_cache_entries(tmp_path):
    """The base's cache honours the operator's bound for every model gadget (multicontrast's ignored it)."""
    weights = tiny_weights(tmp_path)
    ref, tgt = brain(slices=3)
    header = make_header(tgt, n_contrasts=2)
    settings = host_settings.load({}).with_values(max_cache_entries=2, reference_store=str(tmp_path / "store"))
    stream = SGFMRIStream(header, ET.fromstring("<configuration/>"), settings=settings,
                          backend=InProcessBackend(device="cpu", weights={"sgfmri": str(weights["sgfmri"])}))
    acc = FrameAccumulator(header)
    images, most = [], 0
    mask = line_mask("equispaced", 48, 1, accel=4, seed=0)
    for acq in exam_acquisitions([ref, tgt], [None, mask]):
        for frame in acc.add(acq):
            images += stream.add(frame)
            most = max(most, len(stream.cache.maps) + len(stream.cache._sum))
    assert most == 2  # three slices arrived, maps of two kept
    assert len(series(images, 0)) == 6 and len(series(images, 1)) == 3


# ------------------------------------------------------------------------------------------ the third model
@pytest.fixture(scope="module")
def third_model(tmp_path_factory):
    """``models.dual_unet_cine`` registered in this process, and small untrained weights of it."""
    import models.dual_unet_cine as module

    registry.register(module.ENTRY)  # idempotent: importing registered it; a previous test may have removed it
    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("third")
    path = save_weights(build_model(THIRD, {"width": 4, "resnet_width": 4, "resnet_blocks": 1}), folder,
                        "dual_unet_tiny", THIRD, "tiny-test-1")
    yield {**tiny_weights(folder), THIRD: path}
    registry.unregister(THIRD)  # other tests' Triton health checks every registered model


def _scan():
    scan = small_cine(slices=1, frames=4, coils=4, ny=32, nx=32)
    return scan, acquisitions(scan, line_mask("kt-uniform", 32, 4, accel=4, acs=4), calib_lines=(8, 24))


def _run(stream_host, monkeypatch, weights, **operator):
    operate(monkeypatch, stream_host, model_weights=f"{THIRD}={weights[THIRD]}", device="cpu", **operator)
    scan, items = _scan()
    result = run_session("127.0.0.1", stream_host.port, header=make_header(scan), config_text=XML, items=items)
    assert result.closed and result.texts == [] and result.errors == [], (result.texts, result.errors)
    model = sorted(series(result.images, 1), key=lambda im: im.repetition)
    assert [im.repetition for im in model] == [0, 1, 2, 3]
    for im in model:
        assert "Fallback" not in im.meta, im.meta.get("Fallback")
        assert im.meta["Model"] == "Dual U-Net" and im.meta["ReconMethod"] == "dual U-Net + k-space DC"
        assert im.meta["Weights"] == "dual_unet_tiny" and im.meta["ModelVersion"] == "tiny-test-1"
        assert im.meta["ImageComment"].startswith("Dual U-Net | R=4.0")
    conventional = sorted(series(result.images, 0), key=lambda im: im.repetition)
    return np.stack([pixels(im) for im in model]), np.stack([pixels(im) for im in conventional]), model


@pytest.fixture(scope="module")
def in_process(stream_host, third_model):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return (*_run(stream_host, monkeypatch, third_model), third_model)


def test_third_model_in_process_is_the_registered_network(in_process, third_model):
    images, conventional, model, _ = in_process
    assert {im.meta["InferenceBackend"] for im in model} == {"in-process"}
    assert not np.allclose(images, conventional, atol=1e-3 * conventional.max())  # the network did something
    # the network itself, loaded from its card alone, through the registry
    rec = load_model(THIRD, weights=third_model[THIRD])
    assert rec.info["architecture"] == THIRD and rec.info["operation"] == "cine" and rec.dc == "hard-gradient"


def _served_remotely(stream_host, monkeypatch, in_process, start, stopper, choice: str, endpoint_setting: str) -> None:
    """The third model's images through a server ``start(extra)`` started with its module and weights."""
    weights = in_process[3]
    proc, endpoint = start(["--model-module", "models.dual_unet_cine", "--weights", f"{THIRD}={weights[THIRD]}"])
    try:
        images, _, model = _run(stream_host, monkeypatch, weights, inference_override=choice,
                                **{endpoint_setting: endpoint})
    finally:
        stopper(proc)
    assert {im.meta["InferenceBackend"] for im in model} == {f"{choice} {endpoint}"}
    np.testing.assert_allclose(images, in_process[0], rtol=0, atol=1e-5 * np.abs(in_process[0]).max())


def test_third_model_through_the_zeromq_service(stream_host, monkeypatch, third_model, in_process):
    _served_remotely(stream_host, monkeypatch, in_process,
                     lambda extra: start_service(third_model, models=THIRD, extra=extra), stop,
                     "service", "inference_endpoint")


def test_third_model_through_triton(stream_host, monkeypatch, third_model, in_process):
    python, why = triton_python()
    if python is None:
        pytest.skip(why)
    _served_remotely(stream_host, monkeypatch, in_process,
                     lambda extra: start_triton(python, third_model, models=THIRD, extra=extra), stop_group,
                     "triton", "triton_endpoint")
