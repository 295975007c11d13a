"""Golden images: every shipped pipeline, on a fixed small input, gives the images recorded in ``tests/golden/``.

The goldens were recorded on the code before the model registry and the
model-gadget base were introduced (issue 19), so a restructuring that
changes any pixel, counter or meta field the scanner sees fails here. They
use the tiny seeded test weights (:func:`tests.dl_support.tiny_weights`),
never the shipped ones, which are retrained independently of the code.

A pipeline variant that differs only in where the model runs (``_connect``:
Gadgetron connect mode, run in process by the embedded host; ``_service``:
the ZeroMQ inference service; ``_triton``: Triton) is compared with the
golden of its base pipeline: the same network on the same inputs must give
the same images whichever backend serves it.

Record again (only on purpose, on code whose images are known good)::

    STREAMRECON_RECORD_GOLDEN=1 python -m pytest tests/test_golden_images.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from models.masks import line_mask
from models.phantoms import brain_pair
from simulator.acquire import acquisitions, exam_acquisitions
from simulator.client import run_session
from simulator.header import make_header
from simulator.scan import scan_from_images
from tests.dl_support import (PIPELINES, UNREACHED_LAG_MS, operate, pipeline_text, pixels, start_service,
                              start_triton, stop, stop_group, tiny_weights, triton_python)
from tests.streams import small_cine

GOLDEN = Path(__file__).resolve().parent / "golden"
RECORD = os.environ.get("STREAMRECON_RECORD_GOLDEN", "") == "1"
RTOL = 1e-5  # of the image's largest magnitude: float32 round-off between backends, nothing more

# Meta that names what the scanner files and shows; timings, batch sizes and endpoints vary run to run.
META_KEYS = ("ImageComment", "ReconMethod", "Model", "ModelVersion", "Weights", "ModelInputs", "Mode", "Window",
             "Fallback", "CoilMaps", "Role", "ReferenceSource", "ReferenceAlignment", "ReferenceShift")
BACKEND_SUFFIXES = ("_connect", "_service", "_triton")

CINE_MODULE, PAIR_MODULE = "gadgets.cine_kgmgt", "gadgets.multicontrast"


def shipped() -> list[str]:
    return sorted(p.stem for p in PIPELINES.glob("*.xml"))


def base_of(name: str) -> str:
    """``kgmgt_cine_causal_service`` -> ``kgmgt_cine_causal``: the pipeline whose golden a variant must match."""
    for suffix in BACKEND_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------- inputs
def cine_input(order: str = "realtime"):
    """Four frames of one 32x32 slice, 4 coils, R=4 with a calibration block: deterministic (fixed seeds)."""
    scan = small_cine(slices=1, frames=4, coils=4, ny=32, nx=32,
                      order_dim="phase" if order == "segmented" else "repetition")
    mask = line_mask("kt-uniform", 32, 4, accel=4, acs=4)
    items = acquisitions(scan, mask, calib_lines=(8, 24), order=order, **({"segments": 2} if order == "segmented" else {}))
    return make_header(scan), items


def pair_input():
    """A fully sampled reference contrast and an R=4 target of one 48x48 brain slice, 4 coils."""
    ref_image, tgt_image = brain_pair(48, seed=0)
    kw = dict(n_coils=4, seed=0, fov_mm=(220.0, 220.0, 5.0), frame_ms=1000.0, frame_of_reference_uid="2.25.4242")
    ref = scan_from_images(ref_image[None, None], name="brain_T1w", contrast=0, **kw)
    tgt = scan_from_images(tgt_image[None, None], name="brain_T2w", contrast=1, **kw)
    return make_header(tgt, n_contrasts=2), exam_acquisitions([ref, tgt], [None, line_mask("equispaced", 48, 1, accel=4, seed=0)])


def pipeline_xml(name: str) -> str:
    """The shipped pipeline; the model gadgets run one window per call with no real-time bound, so the
    machine's load decides neither which windows get the model nor how they are batched."""
    if name.startswith("kgmgt"):
        return pipeline_text(name, CINE_MODULE, max_lag_ms=UNREACHED_LAG_MS, max_batch=1)
    return (PIPELINES / f"{name}.xml").read_text()


def run(stream_host, name: str, order: str = "realtime"):
    if name.startswith("sgfmri"):
        header, items = pair_input()
    else:
        header, items = cine_input(order)
    result = run_session("127.0.0.1", stream_host.port, header=header, config_text=pipeline_xml(name), items=items)
    assert result.closed and result.texts == [] and result.errors == [], (result.texts, result.errors)
    return result.images


# ---------------------------------------------------------------------------------------------- recording
def _key(im) -> tuple[int, ...]:
    return (int(im.image_series_index), int(im.slice), int(im.contrast), int(im.phase), int(im.repetition))


def summarise(images) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Pixels and what the scanner sees of each image, in a fixed order (the model thread's order may vary)."""
    images = sorted(images, key=_key)
    arrays, described = {}, []
    for i, im in enumerate(images):
        arrays[f"image_{i}"] = np.asarray(pixels(im), dtype=np.float32)
        described.append({"key": list(_key(im)), "image_index": int(im.image_index), "image_type": int(im.image_type),
                          "matrix_size": [int(v) for v in im.matrix_size],
                          "meta": {k: str(im.meta[k]) for k in META_KEYS if k in im.meta}})
    return arrays, described


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.npz"


def record(name: str, images) -> None:
    arrays, described = summarise(images)
    GOLDEN.mkdir(exist_ok=True)
    np.savez_compressed(golden_path(name), described=np.array(json.dumps(described, sort_keys=True)), **arrays)


def compare(name: str, images) -> None:
    with np.load(golden_path(name)) as f:
        expected = json.loads(str(f["described"]))
        expected_pixels = [f[f"image_{i}"] for i in range(len(expected))]
    arrays, described = summarise(images)
    assert [d["key"] for d in described] == [d["key"] for d in expected]
    for got, want, a, b in zip(described, expected, [arrays[f"image_{i}"] for i in range(len(described))], expected_pixels):
        assert got == want, (name, got, want)
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * max(float(np.abs(b).max()), 1e-30), err_msg=f"{name} {got['key']}")


# ---------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("golden_weights"))


@pytest.fixture(scope="module")
def service(weights):
    proc, endpoint = start_service(weights, models="kgmgt,sgfmri")
    yield endpoint
    stop(proc)


@pytest.fixture(scope="module")
def triton(weights):
    python, why = triton_python()
    if python is None:
        pytest.skip(why)
    proc, endpoint = start_triton(python, weights)
    yield endpoint
    stop_group(proc)


def test_every_shipped_pipeline_has_a_golden():
    for name in shipped():
        assert golden_path(base_of(name)).exists() or RECORD, f"no golden for {name} (record: module docstring)"


@pytest.mark.parametrize("name", [n for n in shipped() if not n.endswith(("_service", "_triton"))])
def test_in_process_pipeline_gives_its_golden_images(stream_host, weights, monkeypatch, name):
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], sgfmri_weights=weights["sgfmri"], device="cpu")
    images = run(stream_host, name)
    if RECORD and name == base_of(name):
        record(name, images)
    compare(base_of(name), images)


@pytest.mark.parametrize("name", [n for n in shipped() if n.endswith("_service")])
def test_service_pipeline_gives_its_base_pipelines_golden_images(stream_host, service, monkeypatch, name):
    operate(monkeypatch, stream_host, inference_endpoint=service)
    compare(base_of(name), run(stream_host, name))


@pytest.mark.parametrize("name", [n for n in shipped() if n.endswith("_triton")])
def test_triton_pipeline_gives_its_base_pipelines_golden_images(stream_host, triton, monkeypatch, name):
    operate(monkeypatch, stream_host, triton_endpoint=triton)
    compare(base_of(name), run(stream_host, name))


@pytest.mark.parametrize("name", ["kgmgt_cine", "kgmgt_cine_causal", "kgmgt_cine_service"])
def test_gated_cine_gives_its_golden_images(stream_host, weights, service, monkeypatch, name):
    """Gated (segmented, periodic) cine: phase 0's window wraps to the last phase."""
    operate(monkeypatch, stream_host, kgmgt_weights=weights["kgmgt"], device="cpu", inference_endpoint=service)
    images = run(stream_host, name, order="segmented")
    golden = base_of(name) + "_gated"
    if RECORD and name == base_of(name):
        record(golden, images)
    compare(golden, images)


def test_goldens_hold_model_images_not_fallbacks():
    """The goldens would prove little if the recorded model series were fallbacks."""
    for name in ("kgmgt_cine", "kgmgt_cine_causal", "sgfmri_multicontrast", "kgmgt_cine_gated", "kgmgt_cine_causal_gated"):
        with np.load(golden_path(name)) as f:
            described = json.loads(str(f["described"]))
        model = [d for d in described if d["key"][0] == 1]
        assert model and all("Fallback" not in d["meta"] for d in model), name
        assert all(d["meta"]["ModelVersion"] == "tiny-test-1" for d in model), name
