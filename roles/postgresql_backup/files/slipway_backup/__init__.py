"""slipway-backup: pgBackRest backups that are proven by a restore, and restores that an
operator can trust. Installed on the db host by the postgresql_backup role as
/usr/local/sbin/slipway-backup; runs as root and runs pgBackRest, psql and pg_ctl as postgres.

    slipway-backup backup --type full|diff|incr [--no-verify]   # back up, verify, restore-test
    slipway-backup verify [--set LABEL]                         # verify + scratch restore test
    slipway-backup list                                         # backups and recovery window
    slipway-backup check-target (--latest | --set LABEL | --time TIME)
    slipway-backup restore (--latest | --set LABEL | --time TIME) (--live --confirm | --scratch)
    slipway-backup drop-scratch
    slipway-backup dump                                         # optional pg_dump export
    slipway-backup metrics                                      # textfile for node_exporter

Every command prints one JSON object on stdout (progress goes to stderr) and exits 0 on
success, 1 on failure, 2 on bad input. Settings come from /etc/slipway-backup.json, written by
the role. Python 3.11 standard library only (Debian bookworm's python3).
"""
