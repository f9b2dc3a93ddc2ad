"""What the trial runs and how long it waits for each thing, what --dry-run pretends the
cluster answers, and the one error it raises."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = ("deploy", "bad", "rollback", "concurrent", "task", "migrations", "status")
DEPLOY, RESTART, ROLLBACK = (
    "playbooks/deploy.yml",
    "playbooks/restart.yml",
    "playbooks/rollback.yml",
)
STATUS, PROBE = "playbooks/status.yml", "tools/trial_probe.yml"
PLAYBOOK_TIMEOUT_S, PROBE_TIMEOUT_S, AD_HOC_TIMEOUT_S = 900.0, 300.0, 120.0
LOAD_MARGIN_S, LOCK_WAIT_S, TASK_WAIT_S, SLEEP_TASK_S = 3.0, 120.0, 180.0, 15
# How long a trial request may wait for an answer. nginx answers 504 after its
# proxy_read_timeout (the nginx role's 60 s), and a 504 counts as failed; the client waits a
# little longer, so the verdict on a slow request is nginx's. A request that waits through a
# restart is slow, not failed: each step reports its longest wait (longest_wait_ms).
CLIENT_TIMEOUT_S = 65
# restart.yml's worker play, as ansible-playbook announces it: the task step sends its job then.
WORKER_PLAY = "PLAY [Workers"
# What --dry-run pretends the cluster answers, so every step prints all of its commands.
DRY_PROBE = {"hosts": {}, "web": ["FIRST_WEB"], "lock_host": "LOCK_HOST", "lock_path": "LOCK_PATH"}
DRY_LOCK = {"held": True, "stale": True, "lock": {"holder": "HOLDER", "token": "TOKEN"}}


class TrialError(Exception):
    """Something the trial could not do, said as a sentence."""
