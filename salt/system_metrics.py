"""GPU / CPU / memory / disk / network metrics of the training host, logged as ``system/*``.

MLflow's collectors (``mlflow.system_metrics.metrics``: psutil for CPU, memory, disk and network;
NVML through ``nvidia-ml-py`` for GPUs, skipped where there is none) are sampled by one daemon
thread every ``every_s`` seconds. The values go through the run's ``TrackingWriter`` rather than
MLflow's own ``SystemMetricsMonitor``: that monitor writes synchronously and stops for good at the
first failed request, so a store outage would end system metrics for the rest of the run, while
the writer spools them like every other metric. The step is the trainer's global step (read from
``step_fn``), so ``system/gpu_0_utilization_percentage`` lines up with ``train/loss`` in the
MLflow UI. Only global rank 0 samples (its own node); names are MLflow's (``system/<name>``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("salt.tracking")
PREFIX = "system/"


def _monitors() -> list[Any]:
    """MLflow's collectors that work on this host (psutil ones always, GPU ones if NVML loads)."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception as e:  # no NVML / no NVIDIA GPU
        log.debug("no GPU system metrics: %s", e)
    return monitors


class SystemMetrics:
    """Samples host metrics into ``writer`` every ``every_s`` seconds until ``stop()``.

    Args:
        writer: anything with ``log_metrics(metrics, step)`` (a ``TrackingWriter``).
        step_fn: returns the current global step.
        every_s: sampling interval in seconds.
    """

    def __init__(self, writer: Any, step_fn: Callable[[], int], every_s: float = 10.0) -> None:
        self.writer, self.step_fn, self.every_s = writer, step_fn, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.monitors: list[Any] = []
        self.samples = 0

    def start(self) -> SystemMetrics:
        try:
            self.monitors = _monitors()
        except Exception as e:  # psutil missing: say so once, train on
            log.warning("system metrics off: %s: %s", type(e).__name__, e)
            return self
        self._thread = threading.Thread(target=self._loop, name="salt-sysmetrics", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> dict[str, float]:
        """One reading of every monitor, as ``{"system/<name>": value}``."""
        values: dict[str, float] = {}
        for monitor in self.monitors:
            try:
                monitor.collect_metrics()
                values.update(monitor.aggregate_metrics())
            except Exception as e:  # one failing collector must not stop the others
                log.debug("system metric collector %s failed: %s", type(monitor).__name__, e)
            finally:
                monitor.clear_metrics()
        return {PREFIX + k: float(v) for k, v in values.items()}

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            values = self.sample()
            if values:
                self.writer.log_metrics(values, step=int(self.step_fn()))
                self.samples += 1

    def stop(self) -> None:
        """Stop sampling, with one last sample (a run shorter than ``every_s`` gets one too)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
            values = self.sample()
            if values:
                self.writer.log_metrics(values, step=int(self.step_fn()))
                self.samples += 1
