#!/usr/bin/python
"""Ensure the app's PostgreSQL role (SCRAM password) and database, through local psql."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: postgresql_app
short_description: Ensure an app's PostgreSQL login role, SCRAM password and database
description:
  - Ensures one login role with no special powers (no superuser, createdb, createrole,
    replication or bypassrls), whose stored password is a SCRAM-SHA-256 verifier of
    O(password), and one database owned by that role.
  - Talks to the local cluster as the C(postgres) OS user through C(runuser) and C(psql)
    over the Unix socket (peer authentication); SQL goes to psql on standard input, never on
    the command line.
  - The password is compared, not just set. The module reads the stored verifier from
    C(pg_authid) and recomputes it from O(password) with the stored salt and iteration count;
    only when they differ (or the stored password is MD5 or empty) does it write a new one.
    The new verifier is computed here, so the clear-text password never reaches the server,
    its logs or C(pg_stat_activity).
  - "Needs root on the database host (C(become: true))."
version_added: "0.1.0"
author: slipway
options:
  name:
    description: The role's name.
    type: str
    required: true
  password:
    description:
      - The role's password, printable ASCII (PostgreSQL runs non-ASCII passwords through
        SASLprep, which this module does not reimplement).
    type: str
    required: true
  database:
    description: The database to create, owned by O(name).
    type: str
    required: true
  encoding:
    description: Encoding of a newly created database (from C(template0)).
    type: str
    default: UTF8
  port:
    description: Port of the local cluster (selects its Unix socket).
    type: int
    default: 5432
  os_user:
    description: OS user that psql runs as; it must be a superuser by peer authentication.
    type: str
    default: postgres
  scram_iterations:
    description: PBKDF2 iteration count of a newly written SCRAM verifier.
    type: int
    default: 4096
notes:
  - Supports check mode. When psql is not installed yet and the module runs in check mode, it
    reports C(changed=true) instead of failing.
"""

EXAMPLES = r"""
- name: Ensure the app's role, password and database
  postgresql_app:
    name: slipway
    password: "{{ slipway_db_password }}"
    database: slipway
  no_log: true
"""

RETURN = r"""
role_created:
  description: Whether the role was (or in check mode would be) created.
  returned: always
  type: bool
role_attributes_changed:
  description: Whether the role's attributes were reset to LOGIN and no special powers.
  returned: always
  type: bool
password_changed:
  description: Whether a new SCRAM-SHA-256 verifier was (or would be) written.
  returned: always
  type: bool
database_created:
  description: Whether the database was (or would be) created.
  returned: always
  type: bool
owner_changed:
  description: Whether the database's owner was (or would be) changed to the role.
  returned: always
  type: bool
actions:
  description: What was done, in words, without any secret.
  returned: always
  type: list
  elements: str
  sample: ["created role slipway", "created database slipway owned by slipway"]
"""

_SEP = "\x1f"
_SCRAM_RE = re.compile(
    r"^SCRAM-SHA-256\$(?P<iter>\d+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored>[A-Za-z0-9+/=]+):(?P<server>[A-Za-z0-9+/=]+)$"
)
# Attributes the app's role must have: column of pg_authid -> wanted value.
_WANTED_ATTRS = {
    "rolcanlogin": True,
    "rolsuper": False,
    "rolcreatedb": False,
    "rolcreaterole": False,
    "rolreplication": False,
    "rolbypassrls": False,
}
_ATTRS_SQL = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """Return (StoredKey, ServerKey) as RFC 5802 and PostgreSQL define them."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(password: str, salt: bytes, iterations: int) -> str:
    """Build a PostgreSQL SCRAM-SHA-256 verifier (the form pg_authid stores)."""
    stored_key, server_key = _scram_keys(password, salt, iterations)
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def scram_matches(password: str, stored: str | None) -> bool:
    """True when `stored` is a SCRAM-SHA-256 verifier of `password`."""
    match = _SCRAM_RE.match(stored or "")
    if not match:
        return False
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        want_stored = base64.b64decode(match["stored"], validate=True)
        want_server = base64.b64decode(match["server"], validate=True)
    except ValueError:
        return False
    stored_key, server_key = _scram_keys(password, salt, int(match["iter"]))
    return hmac.compare_digest(stored_key, want_stored) and hmac.compare_digest(
        server_key, want_server
    )


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PsqlRunner:
    """Runs SQL through `runuser -u <os_user> -- psql` over the local socket."""

    def __init__(self, module: AnsibleModule, psql: str, runuser: str) -> None:
        self.module = module
        self.psql = psql
        self.runuser = runuser

    def run(self, sql: str) -> list[list[str]]:
        params = self.module.params
        cmd = [
            self.runuser, "-u", params["os_user"], "--",
            self.psql, "-X", "-q", "-A", "-t", "-F", _SEP, "-v", "ON_ERROR_STOP=1",
            "-p", str(params["port"]), "-d", "postgres", "-f", "-",
        ]  # fmt: skip
        rc, out, err = self.module.run_command(cmd, data=sql, cwd="/")
        if rc != 0:
            self.module.fail_json(
                msg=(
                    f"psql as {params['os_user']} on port {params['port']} failed with exit "
                    f"code {rc}: {err.strip() or out.strip()}. Is the cluster running "
                    f"(systemctl status postgresql@*)?"
                ),
                rc=rc,
            )
        return [line.split(_SEP) for line in out.splitlines() if line]


def ensure(module: AnsibleModule, runner: PsqlRunner) -> dict[str, Any]:
    p = module.params
    name, database = p["name"], p["database"]
    result: dict[str, Any] = {
        "changed": False,
        "role_created": False,
        "role_attributes_changed": False,
        "password_changed": False,
        "database_created": False,
        "owner_changed": False,
        "actions": [],
    }
    attrs = ", ".join(_WANTED_ATTRS)
    rows = runner.run(
        f"SELECT {attrs}, coalesce(rolpassword, '') FROM pg_authid "
        f"WHERE rolname = {quote_literal(name)};\n"
    )
    statements: list[str] = []
    new_verifier = scram_verifier(p["password"], os.urandom(16), p["scram_iterations"])
    if not rows:
        result["role_created"] = result["password_changed"] = True
        result["actions"].append(f"created role {name}")
        statements.append(
            f"CREATE ROLE {quote_ident(name)} {_ATTRS_SQL} PASSWORD {quote_literal(new_verifier)};"
        )
    else:
        row = rows[0]
        current = {col: row[i] == "t" for i, col in enumerate(_WANTED_ATTRS)}
        if current != _WANTED_ATTRS:
            result["role_attributes_changed"] = True
            result["actions"].append(f"reset attributes of role {name} to {_ATTRS_SQL}")
            statements.append(f"ALTER ROLE {quote_ident(name)} {_ATTRS_SQL};")
        if not scram_matches(p["password"], row[len(_WANTED_ATTRS)]):
            result["password_changed"] = True
            result["actions"].append(f"set a new SCRAM-SHA-256 password for role {name}")
            statements.append(
                f"ALTER ROLE {quote_ident(name)} PASSWORD {quote_literal(new_verifier)};"
            )

    dbs = runner.run(
        "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database "
        f"WHERE datname = {quote_literal(database)};\n"
    )
    if not dbs:
        result["database_created"] = True
        result["actions"].append(f"created database {database} owned by {name}")
        # CREATE DATABASE cannot run in a transaction block: its own statement.
        statements.append(
            f"CREATE DATABASE {quote_ident(database)} OWNER {quote_ident(name)} "
            f"TEMPLATE template0 ENCODING {quote_literal(p['encoding'])};"
        )
    elif dbs[0][0] != name:
        result["owner_changed"] = True
        result["actions"].append(f"changed owner of database {database} from {dbs[0][0]} to {name}")
        statements.append(f"ALTER DATABASE {quote_ident(database)} OWNER TO {quote_ident(name)};")

    result["changed"] = bool(statements)
    if statements and not module.check_mode:
        runner.run("\n".join(statements) + "\n")
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "database": {"type": "str", "required": True},
            "encoding": {"type": "str", "default": "UTF8"},
            "port": {"type": "int", "default": 5432},
            "os_user": {"type": "str", "default": "postgres"},
            "scram_iterations": {"type": "int", "default": 4096},
        },
        supports_check_mode=True,
    )
    p = module.params
    if not p["password"].isascii() or not p["password"].isprintable() or not p["password"]:
        module.fail_json(
            msg=f"The password of role {p['name']} must be non-empty printable ASCII "
            "(PostgreSQL would SASLprep other characters; this module does not)."
        )
    if p["scram_iterations"] < 4096:
        module.fail_json(msg=f"scram_iterations is {p['scram_iterations']}; use 4096 or more.")
    psql = module.get_bin_path("psql")
    if psql is None:
        if module.check_mode:
            module.exit_json(
                changed=True,
                msg="psql is not installed yet: the role, password and database would be created.",
            )
        module.fail_json(msg="psql is not installed on this host; install postgresql first.")
    if os.geteuid() != 0:
        module.fail_json(msg="postgresql_app needs root on the database host (become: true).")
    runuser = module.get_bin_path("runuser", required=True)
    result = ensure(module, PsqlRunner(module, psql, runuser))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
