"""Many workers claiming at once over HTTP, as threads: what each trial's claims were, for tests that
check every trial is handed out exactly once."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx

API = "/api/v1"


class ClaimRecord:
    """Claims and completes trials until the server has none left, from any number of threads."""

    def __init__(self) -> None:
        self.claims: Counter[int] = Counter()
        self.configs: dict[int, tuple[int, dict[str, Any]]] = {}
        """trial id -> (sweep id, hparams) as the assignment handed them out."""
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def work(self, base_url: str, worker_id: str, report_epoch: bool = False) -> None:
        """Claim, (report one epoch,) complete, until a claim answers 204 or anything fails."""
        with httpx.Client(base_url=base_url + API, timeout=60) as http:
            while True:
                answer = http.post("/trials/claim", json={"worker_id": worker_id, "host": "test"})
                if answer.status_code == 204:
                    return
                if answer.status_code != 200:
                    self.errors.append(f"claim: {answer.status_code} {answer.text}")
                    return
                assignment = answer.json()
                trial_id = assignment["trial_id"]
                with self._lock:
                    self.claims[trial_id] += 1
                    self.configs[trial_id] = (assignment["sweep_id"], assignment["hparams"])
                reports = [("complete", {"metrics": {"val_accuracy": 0.5, "val_loss": 0.5}})]
                if report_epoch:
                    reports.insert(0, ("metrics", {"epoch": 0, "metrics": {"loss": 1.0}}))
                for action, body in reports:
                    body = {"worker_id": worker_id, "lease_token": assignment["lease_token"], **body}
                    done = http.post(f"/trials/{trial_id}/{action}", json=body)
                    if done.status_code != 200:
                        self.errors.append(f"{action} {trial_id}: {done.status_code} {done.text}")
                        return

    def run(self, base_urls: list[str], workers: int, timeout: float, report_epoch: bool = False) -> None:
        """`workers` threads, worker k claiming through base_urls[k % len(base_urls)]; waits for all."""
        threads = [threading.Thread(target=self.work, args=(base_urls[k % len(base_urls)], f"worker-{k}",
                                                             report_epoch)) for k in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=timeout)
        assert not any(thread.is_alive() for thread in threads), f"workers still claiming after {timeout} s"
