"""One shipped pipeline run over a python-ismrmrd-server connection.

The server (``server.py`` of python-ismrmrd-server, used unmodified) hands
``process(connection, config, metadata)`` a connection that iterates the
scan's MRD items (``None`` once the client's CLOSE has arrived) and sends
with ``send_image`` / ``send_acquisition`` / ``send_waveform`` /
``send_logging`` / ``send_close``. This module feeds those items into the
embedded host's :class:`~pipelines.chain.Chain` (one thread per gadget,
the gadgets of the pipeline XML, nothing re-implemented) and sends what
leaves the chain back as it comes.

What a client may choose (the config JSON's ``parameters``): ``output``,
``int16`` (default, as the reference server's modules send) or ``float``.
Everything that touches the host (weights, device, inference endpoints,
limits) is the operator's: ``STREAMRECON_*`` environment variables or
``STREAMRECON_CONFIG`` in the container (:mod:`gadgets.host_settings`).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import ismrmrd
import ismrmrd.xsd

from gadgets import host_settings
from gadgets.header_checks import unsupported_reason

from ..chain import Chain
from ..pipeline_config import DEFAULT_GADGET_PACKAGES, PipelineError, load_gadgets, parse_pipeline, shipped_pipeline_with

log = logging.getLogger(__name__)

OUTPUTS = ("int16", "float")
EMIT_MODULE = "gadgets.images"
# python-ismrmrd-server's constants.MRD_LOGGING_ERROR: its client and FIRE show TEXT
# messages starting with this level as errors.
LOGGING_ERROR = "ERROR"
LOGGING_INFO = "INFO"
# How long the chain may take to finish after the scan's CLOSE (as the embedded host's
# gadget_timeout_s): a hung gadget must not hold the scanner's connection for ever.
FINISH_TIMEOUT_S = 600.0


class FireRequestError(ValueError):
    """The scan cannot be run; the text goes back to the scanner."""


def client_parameters(config: Any) -> dict[str, Any]:
    """The ``parameters`` of the server's config JSON (a dict once parsed), or {} for a bare config name."""
    if isinstance(config, dict):
        params = config.get("parameters", {})
        return params if isinstance(params, dict) else {}
    return {}


def output_kind(config: Any) -> str:
    """The pixel type the client asked for (``parameters.output``), int16 by default."""
    value = str(client_parameters(config).get("output", "int16")).strip().lower()
    if value not in OUTPUTS:
        raise FireRequestError(f"parameters.output {value!r}: must be one of {', '.join(OUTPUTS)}")
    return value


def pipeline_xml(pipeline: str, output: str) -> str:
    """The shipped pipeline with its image emission in python-ismrmrd-server's conventions."""
    return shipped_pipeline_with(pipeline, EMIT_MODULE, output=output, meta="fire")


def header_xml(metadata: Any) -> tuple[Any, bytes]:
    """``(parsed header, its XML bytes)``; the server passes the text on when it could not parse it."""
    if isinstance(metadata, (str, bytes)):
        raise FireRequestError("the MRD header is not a valid ISMRMRD XML header")
    return metadata, ismrmrd.xsd.ToXML(metadata).encode("utf-8")


def _send(connection: Any, item: Any) -> None:
    if isinstance(item, ismrmrd.Image):
        connection.send_image(item)
    elif isinstance(item, ismrmrd.Acquisition):
        connection.send_acquisition(item)
    elif isinstance(item, ismrmrd.Waveform):
        connection.send_waveform(item)
    else:
        log.warning("dropping %s at the end of the chain (no MRD message for it)", type(item).__name__)


def _send_results(chain: Chain, connection: Any, counts: dict[str, int], failures: list[str]) -> None:
    for item in chain.output():
        if failures:  # the client is gone: drain the chain so its gadgets can finish
            continue
        try:
            _send(connection, item)
            counts[type(item).__name__] = counts.get(type(item).__name__, 0) + 1
        except OSError as exc:
            failures.append(f"sending results failed: {exc}")


def run(pipeline: str, connection: Any, config: Any, metadata: Any) -> dict[str, int]:
    """Run the shipped ``pipeline`` over ``connection``; always ends with the server's CLOSE.

    Returns what was sent per item type. Every failure (bad request, refused
    header, a gadget's error) reaches the scanner as an ``ERROR`` text after
    every image the data that did arrive could make.
    """
    counts: dict[str, int] = {}
    errors: list[str] = []
    try:
        errors = _run(pipeline, connection, config, metadata, counts)
    except (FireRequestError, PipelineError) as exc:
        errors = [str(exc)]
    except Exception as exc:  # never leave the scanner without a reason
        log.exception("streamrecon %s failed", pipeline)
        errors = [f"streamrecon {pipeline} failed: {type(exc).__name__}: {exc}"]
    finally:
        for text in errors:
            log.error("streamrecon %s: %s", pipeline, text)
            try:
                connection.send_logging(LOGGING_ERROR, text)
            except OSError:
                break
        try:
            connection.send_close()
        except OSError:
            pass
    log.info("streamrecon %s: sent %s", pipeline, ", ".join(f"{v} {k}" for k, v in counts.items()) or "nothing")
    return counts


def _run(pipeline: str, connection: Any, config: Any, metadata: Any, counts: dict[str, int]) -> list[str]:
    output = output_kind(config)
    spec = load_gadgets(parse_pipeline(pipeline_xml(pipeline, output), name=pipeline), DEFAULT_GADGET_PACKAGES)
    header, raw = header_xml(metadata)
    refusal = unsupported_reason(header)
    if refusal is not None:
        raise FireRequestError(refusal)
    settings = host_settings.load()
    host_settings.check_header(header, settings)
    log.info("streamrecon %s: %s, %s images", pipeline, " -> ".join(g.label for g in spec.gadgets), output)
    chain = Chain(spec.gadgets, header, raw, label=f"fire:{pipeline}", operator_settings=settings)
    chain.start()
    failures: list[str] = []
    writer = threading.Thread(target=_send_results, args=(chain, connection, counts, failures),
                              name=f"fire:{pipeline}:writer", daemon=True)
    writer.start()
    input_error = None
    try:
        for item in connection:
            if item is None:  # the client's CLOSE
                break
            if isinstance(item, (ismrmrd.Acquisition, ismrmrd.Image, ismrmrd.Waveform)):
                if not chain.feed(item):
                    break  # the first gadget stopped; its reason is in chain.errors
            else:
                log.info("streamrecon %s: ignoring %s from the client", pipeline, type(item).__name__)
    except OSError as exc:  # the client vanished: still reconstruct what arrived
        input_error = f"connection error: {exc}"
    finally:
        chain.close_input()
    late = [] if chain.join(FINISH_TIMEOUT_S) else [f"the gadget chain did not finish within {FINISH_TIMEOUT_S:.0f} s"]
    writer.join(FINISH_TIMEOUT_S)
    return ([input_error] if input_error else []) + chain.errors + late + failures


def process(connection: Any, config: Any, metadata: Any, *, pipeline: str) -> None:
    """python-ismrmrd-server's entry point, for a thin per-pipeline module to call."""
    run(pipeline, connection, config, metadata)
