"""Release trial: a rolling deploy, a bad release, a rollback, two deploys at once, a task
through a restart and status.yml; under load where clients would notice, each checked against
what the hosts really run (tools/trial_probe.yml), not against the playbook's word.

    python3 -m tools.release_trial --inventory INV --url https://NAME/health/ready \\
        --connect LB_IP:443 --cacert PEBBLE_ROOT_CA --out DIR [--limit PATTERN] \\
        [--steps deploy,bad,rollback,concurrent,task,status] [--project REPO] [--dry-run]

Steps (each a dict of figures, `checks` and `passed` in trial.json): deploy (release good-1
under load), bad (a release whose readiness fails, under load: its first web host goes back
by itself), rollback (rollback.yml under load), concurrent (a second deploy.yml while good-2
deploys; then restart.yml over a stale lock), task (a sleep job running through restart.yml's
worker restart), status (status.yml after each step, against the probe). A release is a copy
of the repository's files (git ls-files -co --exclude-standard) in DIR/src-<name> with one
line appended, deployed with -e app_project_dir. The load: tools.loadgen, 8 connections at
50 requests/s, from 3 s before a playbook to 3 s after it; failed: non-2xx (nginx's 504
after 60 s included) or no answer within 65 s. Each step reports its longest wait.

Runs ansible-playbook (from PATH: the venv's bin) in the repository root with
ANSIBLE_CONFIG=<repo>/ansible.cfg and SLIPWAY_AUDIT_LOG=DIR/audit.log; each run's output goes
to DIR/<run>.log, each step's requests to DIR/<step>-requests.jsonl. Writes DIR/trial.json and
prints it; exit 0 when every step passed its checks, else 1 with each failed check said in
one sentence on stderr. --dry-run prints every command it would run and runs none.
"""

# Modules, one job each: cli (arguments, main), config (what runs, how long it waits, the
# error), releases (the release copies and their vars), checks (pure evaluation: what the
# probe and the playbooks said, and each failed check's sentence), runner (playbooks, ad-hoc
# commands, the probe, the load and the app's API as processes and requests), steps (the
# six steps and the Trial that runs them). `python3 -m tools.release_trial` runs cli.main.
