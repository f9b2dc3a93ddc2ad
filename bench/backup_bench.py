"""Backups of the db host: pg_dump | gzip against pgBackRest with the postgresql_backup role's
defaults (backup and restore seconds in one run, with their ratios), a compression matrix
behind the defaults, and the recovery point (committed writes lost) of a crash.

    python3 bench/backup_bench.py [--json] [--keep] [--dry-run] [--size-mb 1024]

A cluster of its own (`bench-backup`, one VM `bbak-db` in group db) converged with
playbooks/db.yml (-e postgresql_backup_initial=false: the bench takes its own backups). On
the VM, a database `benchdb` of about --size-mb MB is generated in SQL: pgbench -i (about 60 %)
and a table of orders as JSONB and text with two indexes (the rest); its real size is
pg_database_size. Then, in this order, every step timed on the VM itself (no SSH in the
figures) with a warm page cache throughout (the VM has the machine's RAM):

1. baseline: `pg_dump benchdb | gzip` to a file, and its restore `gunzip -c | psql` into a
   new database (dropped again with the file, so later backups copy the same cluster);
2. the matrix: `pgbackrest backup --type=full` with --compress-type/-level/--process-max on
   the command line (the role's defaults are zst 3 and one process per core, 2 here);
3. pgBackRest with the role's defaults: `slipway-backup backup --type full --no-verify`
   (its backup_seconds; repo MB is that set's size in `pgbackrest info`), then
   `slipway-backup restore --latest --scratch` (restore + recovery seconds until the
   scratch cluster accepts connections; the `pgbackrest verify` it runs first is reported
   apart) and `slipway-backup drop-scratch`;
4. recovery point: a writer on the VM commits a row (n, clock_timestamp()) every ~70 ms
   (at most 1200 rows, at most 90 s); `pgbackrest check` switches and archives the WAL, and
   40 s later the postmaster is killed (-9). (a) Host lost with its disk: a scratch restore
   of the latest state from the repository alone; (b) crash, disk kept: `slipway-backup
   restore --latest --live --confirm`. Loss = last commit the writer saw acknowledged minus
   max(ts) in the restored table (0 if a newer row survived).

MB/s is database MB / seconds (pgBackRest copies the whole cluster: also reported). Logs:
.cache/backup-bench/logs/<step>.log. The VM is removed at the end (also on failure) unless
--keep. Needs root and the controller venv. --dry-run prints the commands and scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import bench.*

from bench.backup_report import plot_sizes, table  # noqa: E402

BIN = REPO / ".venv" / "bin"
CLUSTER, VM = "bench-backup", "bbak-db"
WORK = REPO / ".cache" / "backup-bench"
PNG = REPO / "bench" / "results" / "backup_by_size.png"
KEY = "/var/lib/slipway-sandbox/ssh/id_ed25519"
GOAL = "backup and restore each >= 2x pg_dump|gzip / psql"
DEFAULT = ("zst", 3, 2)  # the role's compress type, level and process-max on 2 cores
MATRIX = [("zst", 3, 1), ("zst", 3, 2), ("lz4", 1, 2), ("gz", 6, 2)]
ARCHIVE_TIMEOUT_S, NIGHTLY_DUMP_S, CRASH_AFTER_SWITCH_S = 60, 86400, 40
WRITER_ROWS, WRITER_MAX_S = 1200, 90
SCRATCH_SOCKET = "/var/lib/postgresql/slipway-scratch/run"
TOOL = "/usr/local/sbin/slipway-backup"
PG = "runuser -u postgres --"
PSQL = f"{PG} psql -X -A -t -q -v ON_ERROR_STOP=1"


def log(message: str) -> None:
    print(f"backup-bench: {message}", file=sys.stderr, flush=True)


def timed(command: str, tag: str = "@@elapsed") -> str:
    """Remote script lines that run command and print its seconds as `TAG MILLISECONDS`."""
    return f's=$(date +%s%N)\n{command}\necho "{tag} $(( ($(date +%s%N) - s) / 1000000 ))"\n'


def elapsed(out: str, tag: str = "@@elapsed") -> float:
    return int(tagged(out, tag)[0]) / 1000.0


def generate_sql(size_mb: int) -> str:
    """benchdb of about size_mb MB: pgbench tables (~16 MB per scale) and JSONB orders
    (~450 bytes a row with their indexes), then the writer's table."""
    scale = max(1, round(size_mb * 0.6 / 16))
    rows = max(10000, int(size_mb * 0.4 * 1024 * 1024 / 450))
    orders = f"""
CREATE TABLE orders (id bigserial PRIMARY KEY, created timestamptz NOT NULL, customer text NOT NULL,
  title text NOT NULL, body jsonb NOT NULL);
INSERT INTO orders (created, customer, title, body)
SELECT now() - i * interval '7 seconds', 'c' || (i % 5000), 'order ' || md5(i::text),
  jsonb_build_object('status', (ARRAY['new','paid','shipped','returned'])[1 + i % 4],
    'amount', round((random() * 1000)::numeric, 2),
    'tags', jsonb_build_array('t' || i % 17, 't' || i % 31),
    'lines', jsonb_build_array(jsonb_build_object('sku', 'sku-' || i % 997, 'qty', 1 + i % 5)),
    'note', concat_ws(' ', md5(i::text), md5((i * 7)::text), md5((i * 13)::text),
      md5((i * 31)::text)))
FROM generate_series(1, {rows}) AS i;
CREATE INDEX orders_created ON orders (created);
CREATE INDEX orders_customer_status ON orders (customer, (body->>'status'));
CREATE TABLE rp (n int PRIMARY KEY, ts timestamptz NOT NULL DEFAULT clock_timestamp());
VACUUM ANALYZE;
CHECKPOINT;
"""
    return (
        f"{PG} dropdb --if-exists benchdb\n{PG} createdb benchdb\n"
        f"{PG} pgbench -i -q -s {scale} benchdb 2>&1 | tail -1\n"
        f"{PSQL} -d benchdb <<'SQL'\n{orders}SQL\n"
        f"{PSQL} -d benchdb -c \"SELECT 'db', pg_database_size('benchdb'), "
        '(SELECT sum(pg_database_size(oid)) FROM pg_database)"\n'
    )


def baseline_script() -> str:
    dump = f"{PG} pg_dump benchdb | gzip > /var/tmp/bench.sql.gz"
    load = f"gunzip -c /var/tmp/bench.sql.gz | {PSQL} -d benchdb_restore -o /dev/null"
    return (
        f"{PG} dropdb --if-exists benchdb_restore\n{timed(dump)}"
        'echo "@@file_bytes $(stat -c %s /var/tmp/bench.sql.gz)"\n'
        f"{PG} createdb benchdb_restore\n{timed(load, '@@restore')}"
        f"{PG} dropdb benchdb_restore\nrm -f /var/tmp/bench.sql.gz\n"
        f"{PSQL} -d postgres -c CHECKPOINT\n"
    )


def matrix_script(kind: str, level: int, procs: int) -> str:
    backup = (f"{PG} pgbackrest --stanza=slipway --type=full --compress-type={kind} "
              f"--compress-level={level} --process-max={procs} backup")  # fmt: skip
    return timed(backup) + f"{PG} pgbackrest --stanza=slipway info --output=json\n"


WRITER = f"""
rm -f /var/tmp/rp-acks && install -o postgres -m 0644 /dev/null /var/tmp/rp-acks
{PSQL} -d benchdb -c 'TRUNCATE rp'
cat > /var/tmp/rp-writer.sh <<'EOF'
# one committed row every ~70 ms, at most {WRITER_ROWS} rows; stops at the first failure
for n in $(seq 1 {WRITER_ROWS}); do
  out=$(psql -X -A -t -q -d benchdb \\
    -c "INSERT INTO rp (n) VALUES ($n) RETURNING n, extract(epoch FROM ts)") || exit 0
  echo "$out" >> /var/tmp/rp-acks
  sleep 0.07
done
EOF
setsid timeout {WRITER_MAX_S} {PG} bash /var/tmp/rp-writer.sh >/dev/null 2>&1 </dev/null &
echo $! > /var/tmp/rp-writer.pid
sleep 3
{PG} pgbackrest --stanza=slipway check
echo "@@switched $(date +%s.%N)"
"""
CRASH = f"""
{PSQL} -d postgres \\
  -c "SELECT '@@archived', extract(epoch FROM last_archived_time) FROM pg_stat_archiver"
kill -9 "$(head -1 /var/lib/postgresql/15/main/postmaster.pid)"
echo "@@crashed $(date +%s.%N)"
for _ in $(seq 1 200); do
  kill -0 "$(cat /var/tmp/rp-writer.pid)" 2>/dev/null || break
  sleep 0.5
done
echo "@@acked $(tail -1 /var/tmp/rp-acks)"
"""
MAX_TS = "SELECT '@@max', extract(epoch FROM max(ts)), count(*) FROM rp"


def tagged(out: str, tag: str) -> list[str]:
    for line in out.splitlines():
        fields = line.replace("|", " ").split()
        if fields and fields[0] == tag:
            return fields[1:]
    raise SystemExit(f"backup-bench: no {tag} line in: {out[-300:]}")


def tool_json(out: str) -> dict[str, Any]:
    """The JSON object slipway-backup printed (the script's last lines may follow it)."""
    start, end = out.index("{"), out.rindex("}") + 1
    result: dict[str, Any] = json.loads(out[start:end])
    return result


class Bench:
    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.address = "VM_ADDRESS"
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
                    "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}  # fmt: skip

    def sh(self, name: str, argv: list[str], timeout: float) -> str:
        """Run argv with output to WORK/logs/NAME.log; its stdout. A non-zero exit or a
        timeout stops the bench with the log's last lines."""
        path = WORK / "logs" / f"{name}.log"
        log(f"{name}: {shlex.join(argv)[:150]} > {path}")
        if self.dry:
            print(f"# {name}\n{shlex.join(argv)}")
            return ""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout,
                                  check=False)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            path.write_text(f"$ {shlex.join(argv)}\n(timed out)\n")
            raise SystemExit(f"backup-bench: {name} ran past {timeout:.0f} s; read {path}") from exc
        path.write_text(f"$ {shlex.join(argv)}\n--- stdout\n{proc.stdout}\n"
                        f"--- stderr\n{proc.stderr}")  # fmt: skip
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise SystemExit(f"backup-bench: {name} exited {proc.returncode}; read {path}:\n{tail}")
        return proc.stdout

    def vm(self, name: str, script: str, timeout: float = 3600) -> str:
        """A bash script run as root on the VM over SSH (its bridge address only)."""
        argv = ["ssh", "-i", KEY, "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                f"root@{self.address}",
                f"cd / && bash -euo pipefail -c {shlex.quote(script)}"]  # fmt: skip
        return self.sh(name, argv, timeout)

    def up(self) -> None:
        inventory = WORK / "inventory"
        argv = [sys.executable, "-m", "tools.sandbox", "up", "--cluster", CLUSTER, "--json",
                "--inventory", str(inventory / "hosts.yml"), f"--vm={VM}:db"]  # fmt: skip
        if not self.dry:
            shutil.copytree(REPO / "inventories/sandbox/group_vars", inventory / "group_vars",
                            dirs_exist_ok=True)  # fmt: skip
        out = self.sh("sandbox-up", argv, 1800)
        if not self.dry:
            vms = {v["name"]: v["address"] for v in json.loads(out).get("vms", [])}
            if VM not in vms:
                raise SystemExit(f"backup-bench: `sandbox up` did not report {VM}: {out[-500:]}")
            self.address = str(vms[VM])
        self.sh("converge", [str(BIN / "ansible-playbook"), "-i", str(inventory),
                "playbooks/db.yml", "-e", "postgresql_backup_initial=false"], 1800)  # fmt: skip

    def down(self) -> None:
        argv = [sys.executable, "-m", "tools.sandbox", "down", "--cluster", CLUSTER]
        log(f"teardown: {shlex.join(argv)}")
        if not self.dry:
            subprocess.run(argv, cwd=REPO, capture_output=True, check=False, timeout=600)

    def by_size(self, sizes: list[int]) -> list[dict[str, Any]]:
        """pg_dump|gzip against pgBackRest (defaults) at each size: where the ratio turns."""
        rows = []
        for size in sizes:
            r = self.measure(size, full=False)
            if not self.dry:
                rows.append(
                    {k: r[k] for k in ("database_mb", "pg_dump_gzip", "pgbackrest", "ratio")}
                )
        return rows

    def measure(self, size_mb: int, full: bool = True) -> dict[str, Any]:
        """Generate the database, then the baseline and pgBackRest with the defaults; with
        full, also the compression matrix and the recovery point."""
        out = self.vm(f"generate-{size_mb}", generate_sql(size_mb))
        db_bytes, cluster_bytes = (int(x) for x in tagged(out, "db")) if not self.dry else (1, 1)
        mb = db_bytes / 2**20
        r: dict[str, Any] = {
            "database_mb": round(mb, 1),
            "cluster_mb": round(cluster_bytes / 2**20, 1),
        }
        log(f"benchdb: {mb:.0f} MB (cluster {cluster_bytes / 2**20:.0f} MB)")

        out = self.vm(f"baseline-{size_mb}", baseline_script())
        if not self.dry:
            dump_s, load_s = elapsed(out), elapsed(out, "@@restore")
            r["pg_dump_gzip"] = {"backup_s": round(dump_s, 1), "backup_mb_s": round(mb / dump_s, 1),
                                 "file_mb": round(int(tagged(out, "@@file_bytes")[0]) / 2**20, 1),
                                 "restore_s": round(load_s, 1),
                                 "restore_mb_s": round(mb / load_s, 1)}  # fmt: skip
            log(f"pg_dump|gzip: {r['pg_dump_gzip']}")

        r["compression"] = []
        for kind, level, procs in MATRIX if full else []:
            out = self.vm(f"matrix-{kind}{level}-p{procs}", matrix_script(kind, level, procs))
            if self.dry:
                continue
            info = next(x for x in out.splitlines() if x.startswith("["))
            newest = json.loads(info)[0]["backup"][-1]
            row = {"compress_type": kind, "compress_level": level, "process_max": procs,
                   "backup_s": round(elapsed(out), 1),
                   "repo_mb": round(newest["info"]["repository"]["delta"] / 2**20, 1),
                   "default": (kind, level, procs) == DEFAULT}  # fmt: skip
            r["compression"].append(row)
            log(f"matrix: {row}")

        out = self.vm(f"backup-default-{size_mb}", f"{TOOL} backup --type full --no-verify\n")
        restore = self.vm(f"restore-scratch-{size_mb}", f"{TOOL} restore --latest --scratch\n"
                          f"{TOOL} drop-scratch >/dev/null\n")  # fmt: skip
        if not self.dry:
            b, s = tool_json(out), tool_json(restore)
            backup_s = float(b["backup_seconds"])
            restore_s = s["scratch"]["restore_seconds"] + s["scratch"]["recovery_seconds"]
            r["pgbackrest"] = {"backup_s": round(backup_s, 1),
                               "backup_mb_s": round(mb / backup_s, 1),
                               "repo_mb": round(b["repo_bytes"] / 2**20, 1),
                               "restore_s": round(restore_s, 1),
                               "restore_mb_s": round(mb / restore_s, 1),
                               "restore_detail": s["scratch"],
                               "verify_before_restore_s": s["verify"]["seconds"]}  # fmt: skip
            d = r["pg_dump_gzip"]
            r["ratio"] = {"backup": round(d["backup_s"] / backup_s, 2),
                          "restore": round(d["restore_s"] / restore_s, 2)}  # fmt: skip
            r["goal"] = GOAL
            r["goal_met"] = r["ratio"]["backup"] >= 2 and r["ratio"]["restore"] >= 2
            log(f"pgbackrest: {r['pgbackrest']}; ratio {r['ratio']}")
        if full:
            r["recovery_point"] = self.recovery_point()
        return r

    def recovery_point(self) -> dict[str, Any]:
        out = self.vm("rp-writer", WRITER, 300)
        if not self.dry:
            log(f"writer running; crash in {CRASH_AFTER_SWITCH_S} s (after the WAL switch)")
            time.sleep(CRASH_AFTER_SWITCH_S)
        crash = self.vm("rp-crash", CRASH, 300)
        lost = self.vm("rp-host-lost", f"{TOOL} restore --latest --scratch\n"
                       f"{PSQL} -h {SCRATCH_SOCKET} -p 5433 -d benchdb -c \"{MAX_TS}\"\n"
                       f"{TOOL} drop-scratch >/dev/null\n")  # fmt: skip
        kept = self.vm("rp-disk-kept", f"{TOOL} restore --latest --live "
                       f"--confirm\n{PSQL} -d benchdb -c \"{MAX_TS}\"\n")  # fmt: skip
        result: dict[str, Any] = {"archive_timeout_s": ARCHIVE_TIMEOUT_S,
                                  "nightly_dump_s": NIGHTLY_DUMP_S}  # fmt: skip
        if self.dry:
            return result
        acked = tagged(crash, "@@acked")
        if len(acked) < 2:
            raise SystemExit(
                "backup-bench: the writer saw no commit acknowledged; read rp-crash.log"
            )
        ack_n, ack_ts = int(acked[0]), float(acked[1])
        switched, crashed = (
            float(tagged(out, "@@switched")[0]),
            float(tagged(crash, "@@crashed")[0]),
        )
        for key, text in (("host_lost", lost), ("crash_disk_kept", kept)):
            max_ts, rows = tagged(text, "@@max")
            result[f"{key}_s"] = round(max(0.0, ack_ts - float(max_ts)), 2)
            result[f"{key}_rows_lost"] = max(0, ack_n - int(rows))
        result.update(
            acked_rows=ack_n,
            crash_after_wal_switch_s=round(crashed - switched, 1),
            archived_before_crash_s=round(crashed - float(tagged(crash, "@@archived")[0]), 1),
        )
        log(f"recovery point: {result}")
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="leave the VM up")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--size-mb", type=int, default=1024, help="database size to generate")
    parser.add_argument(
        "--sizes", default="100,250,500", help="smaller sizes (MB) measured first, for the picture"
    )
    args = parser.parse_args()
    if os.geteuid() != 0 and not args.dry_run:
        raise SystemExit("backup-bench: boots a sandbox VM (systemd-nspawn): run it as root")
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    if not all(10 <= n <= 20480 for n in [args.size_mb, *sizes]):
        raise SystemExit("backup-bench: --size-mb and --sizes must be 10-20480")
    bench = Bench(args.dry_run)
    bench.down()  # a cluster left by an earlier run
    if not args.dry_run:
        shutil.rmtree(WORK, ignore_errors=True)
        (WORK / "inventory").mkdir(parents=True)
    try:
        started = time.monotonic()
        bench.up()
        smaller = bench.by_size(sizes)
        result = bench.measure(args.size_mb)
        if args.dry_run:
            return 0
        result["by_size"] = [*smaller, {k: result[k] for k in smaller[0]}] if smaller else []
        result["bench_s"] = round(time.monotonic() - started)
        table(result)
        if result["by_size"]:
            result["by_size_png"] = str(plot_sizes(result["by_size"], PNG).relative_to(REPO))
        if args.json:
            print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            bench.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
