"""The base of the deep-learning gadgets: what every model gadget does the same way, in one place.

A model gadget turns frames (``ReconData`` from :func:`gadgets.frames.accumulate_frames`)
into a conventional series and a model series. What differs between models
is only how frames become a model call: the cine gadget's sliding windows
(:mod:`gadgets.cine_kgmgt`), the multi-contrast gadget's reference/target
pairing (:mod:`gadgets.multicontrast`). Everything else is here:

- settings: the host operator's (:mod:`gadgets.host_settings`, header limits
  checked before anything is sized from it) and the common properties
  ``series_index`` (1), ``conventional_series_index`` (0),
  ``max_calibration_lines`` (32) and ``model`` (a :mod:`models.registry` name
  answering the gadget's operation; default: the operation's default model);
- the inference backend (:func:`gadgets.inference.backend_from_config`) and
  the model's meta (name, version, device, inputs), asked for once, on the
  model path, never holding back the conventional images;
- the coil-map cache, bounded by the operator's ``max_cache_entries``;
- the model worker: the model beside the frame path
  (:mod:`gadgets.realtime_scheduler`) with the per-process model's turn
  waits, properties ``model_thread`` (true), ``max_pending`` (64) and
  ``max_lag_ms`` (the stream's default), and its flagged fallbacks;
- the gadget loop (:func:`serve`): items in, images out through one
  thread-safe send, the stream flushed and the backend closed whatever happens.

A new model gadget: one module with a :class:`ModelStream` subclass
(``OPERATION``, ``add(frame)`` yielding images, ``run_jobs(jobs)`` and
``fallback_for(job, reason)``) and ``reconstruct = gadget(ThatStream)``, plus
one pipeline XML naming it.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator

import ismrmrd
import numpy as np

from models import registry
from models.fft import fft1c, ifft1c

from . import host_settings, properties
from .conventional import CoilMapCache
from .errors import reports_errors
from .frames import Frame, frames_from
from .image_headers import recon_geometry
from .inference import backend_from_config, model_meta
from .inference import preload as preload_backend
from .realtime_scheduler import WALL_CLOCK, RealtimeScheduler, Timebase
from .sent_counts import SentImages

log = logging.getLogger(__name__)


def recon_kspace(kspace: np.ndarray, sampled: np.ndarray, recon_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A frame's measured ``(coils, ny, nx)`` k-space and ``(ny,)`` line mask on the recon matrix.

    Smaller encodings are zero-padded (as :func:`gadgets.conventional.fit_kspace`);
    a readout longer than the recon matrix (oversampling still present) is
    cropped in image space along the readout only, which is exact because
    every sampled line is complete along the readout. A phase-encode axis
    longer than the recon matrix (phase oversampling) cannot be represented
    with a line mask on the recon grid and raises ``ValueError``.
    """
    coils, ny, nx = kspace.shape
    ry, rx = recon_shape
    if ny > ry:
        raise ValueError(f"{ny} phase-encode lines exceed the {ry}-line recon matrix (phase oversampling)")
    pad_y = ry - ny
    k = np.pad(kspace, ((0, 0), (pad_y // 2, pad_y - pad_y // 2), (0, 0))) if pad_y else kspace
    mask = np.pad(sampled, (pad_y // 2, pad_y - pad_y // 2)) if pad_y else sampled
    if nx < rx:
        k = np.pad(k, ((0, 0), (0, 0), ((rx - nx) // 2, rx - nx - (rx - nx) // 2)))
    elif nx > rx:
        x0 = (nx - rx) // 2
        k = fft1c(ifft1c(k, axis=-1)[..., x0:x0 + rx], axis=-1)
    return np.ascontiguousarray(k, dtype=np.complex64), np.asarray(mask, dtype=bool)


def pixels_of(image: ismrmrd.Image) -> np.ndarray:
    """An image's ``(ny, nx)`` pixels."""
    return np.asarray(image.data).reshape(image.data.shape[-2:])


def model_of(config: Any, operation: str) -> str:
    """The registry model a gadget configuration names (property ``model``) for ``operation``, checked."""
    name = str(properties.get(config, "model", "") or "").strip() or registry.default_model(operation)
    entry = registry.get(name)
    if entry.operation != operation:
        raise ValueError(f"property 'model': {name!r} answers {entry.operation or 'nothing'!r}, this gadget "
                         f"{operation!r} (models that do: {registry.names(operation)})")
    return name


def turn_waits(backend: Any, model: str) -> dict[str, Callable[[], float]]:
    """The waits for other scans' turns on a model shared in this process (in-process backends), if any."""
    if not (hasattr(backend, "expected_wait_s") and hasattr(backend, "last_wait_s")):
        return {}
    return {"queue_wait": lambda: backend.expected_wait_s(model), "last_wait": lambda: backend.last_wait_s(model)}


class ModelStream:
    """One stream's state in a model gadget; subclasses add their frames-to-model-call logic (module docstring)."""

    OPERATION = ""  # the models.registry operation the gadget's model answers

    def __init__(self, header: Any, config: Any, backend: Any = None,
                 settings: host_settings.OperatorSettings | None = None) -> None:
        settings = settings if settings is not None else host_settings.load()
        host_settings.check_header(header, settings)
        self.header, self.settings = header, settings
        self.series = properties.get(config, "series_index", 1)
        self.conv_series = properties.get(config, "conventional_series_index", 0)
        if self.series == self.conv_series:
            raise ValueError("series_index and conventional_series_index must differ")
        self.model = model_of(config, self.OPERATION)
        self.entry = registry.get(self.model)
        self.recon_shape, self.fov = recon_geometry(header)
        self.cache = CoilMapCache(self.recon_shape, properties.get(config, "max_calibration_lines", 32),
                                  max_entries=settings.max_cache_entries)
        self.backend = backend if backend is not None else backend_from_config(config, settings)
        # The model's name and version are asked for on the model path, at its first call: a blocking
        # call here (a model load, a dead service's timeout) would hold back the conventional series.
        self.meta: dict[str, str] = {"Model": self.entry.label, "InferenceBackend": self.backend.label}
        self._model_meta_known = False
        self.scheduler: RealtimeScheduler | None = None  # set by attach_scheduler: the model beside the frame path
        self.counts: dict[str, int] = {"model": 0, "fallback": 0}
        self._count_lock = threading.Lock()  # images are made on the scheduler's threads too

    @property
    def recon_method(self) -> str:
        """``ReconMethod`` of the model's images."""
        return self.entry.recon_method or f"{self.entry.label} + k-space DC"

    def count(self, what: str) -> None:
        with self._count_lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def model_ready(self) -> None:
        """Ask the backend for the model's name, version and inputs once (loading an in-process model)."""
        if not self._model_meta_known:
            self.meta.update(model_meta(self.backend, self.model))
            self._model_meta_known = True
            self.on_model_meta()

    def on_model_meta(self) -> None:
        """Hook: the model's meta just arrived (e.g. which inputs its weights take)."""

    # ---------------------------------------------------------------- what a model gadget provides
    def add(self, frame: Frame) -> Iterator[ismrmrd.Image]:
        """One frame in; the images ready now out (the model's go to the scheduler when one is attached)."""
        raise NotImplementedError

    def run_jobs(self, jobs: list[Any]) -> list[ismrmrd.Image]:
        """The model-series images of ``jobs``, in order; falls back per job rather than raise."""
        raise NotImplementedError

    def fallback_for(self, job: Any, reason: str) -> ismrmrd.Image:
        """The flagged classical image of ``job`` when the model's image will not come (``reason``)."""
        raise NotImplementedError

    def flush(self) -> list[ismrmrd.Image]:
        """The stream ended: the images still owed (the scheduler's are sent from its threads)."""
        if self.scheduler is not None:
            self.scheduler.finish()
        return []

    def default_max_lag_ms(self) -> float:
        """The real-time bound when the pipeline sets none (0: off)."""
        return 0.0

    max_batch = 1  # most jobs one model call takes

    def summary(self, sent: SentImages) -> str:
        return sent.summary()

    # ---------------------------------------------------------------- the model worker
    def attach_scheduler(self, send: Callable[[ismrmrd.Image], None], max_pending: int = 64,
                         max_lag_ms: float = 0.0, clock: Timebase = WALL_CLOCK) -> RealtimeScheduler:
        """Run the model beside the frame path (:mod:`gadgets.realtime_scheduler`); images go to ``send``.

        ``send`` is called from the scheduler's threads (and the frame path's,
        for fallbacks decided there): it must be thread-safe.
        """
        self.scheduler = RealtimeScheduler(
            run=self.run_jobs, deliver=lambda job, image: send(image),
            fallback=lambda job, reason: send(self.fallback_for(job, reason)),
            max_lag_s=max(0.0, max_lag_ms) / 1000.0, max_batch=self.max_batch, max_pending=max_pending,
            prepare=self.model_ready, clock=clock, name=self.model, describe=lambda: self.backend.label,
            **turn_waits(self.backend, self.model))
        return self.scheduler


def serve(stream: ModelStream, connection: Any) -> None:
    """Drive ``stream`` from a gadget connection: frames in, images out (conventional first), until it closes."""
    lock = threading.Lock()  # gadgetron.external.Connection.send is not thread-safe
    sent = SentImages(stream.series)  # the closing log counts what left, not what was computed

    def send(item: Any) -> None:
        with lock:
            connection.send(item)
            sent.note(item)

    config = connection.config
    if properties.get(config, "model_thread", True):
        stream.attach_scheduler(send, properties.get(config, "max_pending", 64),
                                properties.get(config, "max_lag_ms", stream.default_max_lag_ms()))
    try:
        for item in connection:
            if not hasattr(item, "bits"):
                send(item)
                continue
            for frame in frames_from(item):
                for image in stream.add(frame):
                    send(image)
    finally:
        # Also on failure: frames still waiting (for neighbours, for the model) get their images.
        try:
            for image in stream.flush():
                send(image)
        finally:
            stream.backend.close()
            # logged as the gadget module's own line (sites filter gadget logs by module)
            logging.getLogger(type(stream).__module__).info("%s: %s", stream.entry.label, stream.summary(sent))


def gadget(stream_class: type[ModelStream]) -> Callable[[Any], None]:
    """The gadget function of a model stream class: ``reconstruct = gadget(MyStream)``."""

    def reconstruct(connection: Any) -> None:
        serve(stream_class(connection.header, connection.config, settings=host_settings.for_connection(connection)),
              connection)

    # named as the gadget module's own function: error texts and logs say which gadget failed
    reconstruct.__module__, reconstruct.__qualname__ = stream_class.__module__, "reconstruct"
    reconstruct.__doc__ = f"Gadget: ``ReconData`` frames in; conventional and model images out ({stream_class.__name__})."
    return reports_errors(reconstruct)


def preload(config: Any, operation: str, settings: Any = None) -> str:
    """Host hook: load the model this configuration uses before the first scan arrives."""
    return preload_backend(config, model_of(config, operation), settings)


__all__ = ["ModelStream", "serve", "gadget", "preload", "model_of", "recon_kspace", "turn_waits", "pixels_of"]
