"""The agent's hard-sample mining, switched on, retuned and off while the loop runs: the miner is a sink of
the inference loop, the spool and its uploader outlive it (what is spooled keeps uploading when mining stops).
Settings come from agent.yaml `mining:` and, overriding it, the desired state."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.camera.loop import InferenceLoop
from edge_agent.flywheel.config import MiningConfig
from edge_agent.flywheel.sink import MiningSink
from edge_agent.flywheel.spool import Spool
from edge_agent.flywheel.uploader import Uploader

log = logging.getLogger(__name__)


class Mining:
    def __init__(
        self,
        loop: InferenceLoop,
        spool_dir: Path,
        server_url: str,
        device_id: str,
        token: str,
        classes_of: Callable[[str, int], tuple[str, ...]],
        config: MiningConfig,
    ) -> None:
        self.loop, self.spool_dir, self.classes_of = loop, spool_dir, classes_of
        self.server_url, self.device_id, self.token = server_url, device_id, token
        self.spool: Spool | None = None
        self.miner: MiningSink | None = None
        self.uploader: Uploader | None = None
        self.config = config
        if config.enabled:
            self._start(config, start_uploader=False)

    def start(self) -> None:
        if self.uploader is not None:
            self.uploader.start()

    def stop(self) -> None:
        if self.uploader is not None:
            self.uploader.stop()
        if self.spool is not None:
            self.spool.close()

    def _start(self, m: MiningConfig, start_uploader: bool = True) -> None:
        if self.spool is None:
            self.spool = Spool(self.spool_dir, int(m.spool_quota_mb * 1024 * 1024))
            self.uploader = Uploader(self.spool, self.server_url, self.device_id, self.token)
            if start_uploader:
                self.uploader.start()
        self.spool.quota = int(m.spool_quota_mb * 1024 * 1024)
        miner = MiningSink(m, self.spool, self.device_id, self.classes_of)
        self._stop()
        self.miner = miner
        self.loop.sinks.append(miner)
        self.loop.disagreement_hooks.append(miner.on_disagreement)

    def _stop(self) -> None:
        """Stop choosing frames; what is already spooled keeps uploading."""
        old, self.miner = self.miner, None
        if old is not None:
            self.loop.sinks[:] = [s for s in self.loop.sinks if s is not old]
            self.loop.disagreement_hooks[:] = [h for h in self.loop.disagreement_hooks if h != old.on_disagreement]

    def apply(self, data: dict[str, Any]) -> None:
        """Settings from the desired state; refused ones leave the current ones in place, with one log line."""
        try:
            cfg = MiningConfig.model_validate(data)
        except ValueError as exc:
            log.warning("mining settings from the server refused, keeping the current ones: %s", exc)
            return
        if cfg == self.config and (self.miner is not None) == cfg.enabled:
            return
        try:
            if cfg.enabled:
                self._start(cfg)
            else:
                self._stop()
        except ValueError as exc:
            log.warning("mining settings from the server refused: %s", exc)
            return
        self.config = cfg
        log.info("mining %s (%s)", "on" if cfg.enabled else "off", ", ".join(cfg.strategies) or "no strategies")

    def counters(self) -> dict[str, int] | None:
        if self.miner is None or self.spool is None or self.uploader is None:
            return None
        return {
            **self.miner.counters,
            "pending": self.spool.pending(),
            "spool_bytes": self.spool.bytes_used(),
            "evicted": self.spool.evicted,
            "uploaded": self.uploader.uploaded,
            "refused": self.uploader.rejected,
        }
