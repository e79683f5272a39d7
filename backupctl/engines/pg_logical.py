"""PostgreSQL logical backups: pg_dumpall --globals-only plus pg_dump -Fc per database, and back.

Each database is dumped in a snapshot that backupctl exports and keeps open, so the exact row counts it
records (counted in that same snapshot, while pg_dump streams) describe precisely the data in the dump.
Restores create the target database from template0 with the source's encoding and locale, and re-apply
what pg_restore alone would drop: database-level settings, privileges, connection limit and comment.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backupctl.core.config import PostgresSource, SourceConfig
from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.log import get_logger
from backupctl.engines.base import BackupOptions, Engine, StartRun
from backupctl.engines.pg_clocks import stop_clocks
from backupctl.postgres.binaries import PgBinaries, find_binaries
from backupctl.postgres.connection import ConnParams
from backupctl.postgres.tools import ToolProcess
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest
from backupctl.repo.repository import Repository
from backupctl.wal import epochs

log = get_logger(__name__)

# GUCs whose values are lists of quoted names (PostgreSQL's GUC_LIST_QUOTE): pg_dump splits them too.
LIST_QUOTE_GUCS = {"local_preload_libraries", "search_path", "session_preload_libraries",
                   "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"}

_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY 1, 2
"""


@dataclass
class DatabaseInfo:
    """What a restore needs to recreate a database as it was, beyond what its dump holds."""

    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    locale_provider: str  # "libc", "icu" or "builtin"
    locale: str | None  # ICU or builtin locale
    icu_rules: str | None
    connection_limit: int
    comment: str | None
    size: int
    acl: list[dict[str, Any]] | None  # None: the default privileges
    settings: list[dict[str, Any]] = field(default_factory=list)  # {"role": name|None, "name", "value"}
    tables: dict[str, int] = field(default_factory=dict)  # "schema.table" -> exact rows in the dump

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatabaseInfo:
        return cls(**data)


@dataclass
class ServerInfo:
    version_num: int
    version: str
    system_identifier: str
    databases: list[DatabaseInfo]

    @property
    def major(self) -> int:
        return self.version_num // 10000


def inspect_server(params: ConnParams) -> ServerInfo:
    """Version, identity and every database's properties, in one connection."""
    with params.connect() as conn:
        version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])
        version = conn.execute("SHOW server_version").fetchone()[0]
        identifier = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
        rows = conn.execute(_databases_sql(version_num)).fetchall()
        databases = [_database_info(conn, row) for row in rows]
    return ServerInfo(version_num, version, str(identifier), databases)


def _databases_sql(version_num: int) -> str:
    if version_num >= 170000:
        locale = "d.datlocprovider::text, d.datlocale, d.daticurules"
    elif version_num >= 160000:
        locale = "d.datlocprovider::text, d.daticulocale, d.daticurules"
    elif version_num >= 150000:
        locale = "d.datlocprovider::text, d.daticulocale, NULL"
    else:
        locale = "'c', NULL, NULL"
    return f"""
        SELECT d.oid, d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),
               d.datcollate, d.datctype, {locale}, d.datconnlimit,
               shobj_description(d.oid, 'pg_database'), pg_database_size(d.oid), d.datacl IS NULL
        FROM pg_database d
        WHERE d.datallowconn AND NOT d.datistemplate
        ORDER BY d.datname
    """


def _database_info(conn: Any, row: tuple) -> DatabaseInfo:
    (oid, name, owner, encoding, collate, ctype, provider, locale, rules, connlimit, comment, size,
     default_acl) = row
    acl = None
    if not default_acl:
        acl = [
            {"grantee": grantee, "privilege": privilege, "grantable": grantable}
            for grantee, privilege, grantable in conn.execute(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
                "a.privilege_type, a.is_grantable "
                "FROM pg_database d, aclexplode(d.datacl) a WHERE d.oid = %s ORDER BY 1, 2",
                (oid,),
            )
        ]
    settings = [
        {"role": role, "name": item.split("=", 1)[0], "value": item.split("=", 1)[1]}
        for role, config in conn.execute(
            "SELECT CASE WHEN setrole = 0 THEN NULL ELSE pg_get_userbyid(setrole) END, setconfig "
            "FROM pg_db_role_setting WHERE setdatabase = %s ORDER BY 1 NULLS FIRST",
            (oid,),
        )
        for item in config
    ]
    providers = {"c": "libc", "i": "icu", "b": "builtin"}
    return DatabaseInfo(
        name=name, owner=owner, encoding=encoding, collate=collate, ctype=ctype,
        locale_provider=providers.get(provider, "libc"), locale=locale, icu_rules=rules,
        connection_limit=connlimit, comment=comment, size=size, acl=acl, settings=settings,
    )


def dump_binaries(source_bindir: str | None, server_major: int, need: str = "pg_dump") -> PgBinaries:
    """A pg_dump (or pg_dumpall) at least as new as the server, as pg_dump itself requires."""
    binaries = find_binaries(min_major=server_major, bindir=source_bindir, need=need)
    log.info("using PostgreSQL client tools", tool=need, bindir=str(binaries.bindir),
             version=binaries.version, server_major=server_major)
    return binaries


def globals_dump(binaries: PgBinaries, params: ConnParams, role_passwords: bool) -> ToolProcess:
    """pg_dumpall --globals-only as a stream: roles, memberships, tablespaces."""
    argv = [binaries.path("pg_dumpall"), "--globals-only", "--no-password", "-l", params.dbname]
    if not role_passwords:
        argv.append("--no-role-passwords")
    return ToolProcess(argv, params.env(), "pg_dumpall --globals-only")


@contextmanager
def snapshot_dump(binaries: PgBinaries, params: ConnParams, info: DatabaseInfo) -> Iterator[ToolProcess]:
    """Stream ``pg_dump -Fc`` of one database while counting its rows in the very same snapshot.

    The counting connection exports the snapshot and holds it until pg_dump is done: the dump and the
    counts then describe exactly the same data. Counting runs in a thread, alongside the dump.
    """
    with params.connect(info.name, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        tables = conn.execute(_TABLES_SQL).fetchall()
        # The name goes through PGDATABASE: as an argument, a name containing "=" would be parsed as a
        # connection string.
        argv = [binaries.path("pg_dump"), "--format=custom", "--compress=0", "--no-password",
                f"--snapshot={snapshot}"]
        counted: dict[str, int] = {}
        failure: list[BaseException] = []

        def count() -> None:
            from psycopg import sql  # ~120 ms: engines.registry loads every engine, only PostgreSQL pays it

            try:
                for schema, table in tables:
                    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    )
                    counted[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
            except Exception as exc:
                failure.append(exc)

        counter = threading.Thread(target=count, name=f"count-{info.name}", daemon=True)
        env = params.env() | {"PGDATABASE": info.name}
        with ToolProcess(argv, env, f"pg_dump of database {info.name}") as tool:
            counter.start()
            try:
                yield tool
            finally:
                counter.join()
        if failure:
            raise BackupctlError(f"counting rows of database {info.name} failed: {failure[0]}")
        info.tables = counted
        conn.rollback()


# -- restore ------------------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_conninfo(value: str) -> str:
    """A value for a libpq connection string: pg_restore -d and psql -d parse "a=b" as one."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_guc_list(value: str) -> list[str]:
    """Split a list GUC's stored value (``"$user", public``) into its elements, as pg_dump does."""
    items = re.findall(r'\s*("(?:[^"]|"")*"|[^,]*)\s*(?:,|$)', value)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        out.append(item[1:-1].replace('""', '"') if item.startswith('"') else item)
    return out


def setting_sql(database: str, setting: dict[str, Any]) -> str:
    """ALTER DATABASE/ROLE ... SET for one stored setting, quoted the way pg_dump quotes it."""
    name, value = setting["name"], setting["value"]
    if name.lower() in LIST_QUOTE_GUCS:
        rendered = ", ".join(quote_literal(v) for v in split_guc_list(value)) or "''"
    else:
        rendered = quote_literal(value)
    target = f"DATABASE {quote_ident(database)}"
    if setting["role"]:
        target = f"ROLE {quote_ident(setting['role'])} IN {target}"
    return f"ALTER {target} SET {quote_ident(name)} TO {rendered}"


def create_database_sql(info: DatabaseInfo, new_name: str, target_version: int, owner: str | None) -> str:
    """CREATE DATABASE with the source's encoding and locale, from template0."""
    parts = [f"CREATE DATABASE {quote_ident(new_name)} WITH TEMPLATE template0",
             f"ENCODING {quote_literal(info.encoding)}",
             f"LC_COLLATE {quote_literal(info.collate)}", f"LC_CTYPE {quote_literal(info.ctype)}"]
    if target_version >= 150000:
        parts.append(f"LOCALE_PROVIDER {info.locale_provider}")
        if info.locale_provider == "icu" and info.locale:
            parts.append(f"ICU_LOCALE {quote_literal(info.locale)}")
            if info.icu_rules and target_version >= 160000:
                parts.append(f"ICU_RULES {quote_literal(info.icu_rules)}")
        elif info.locale_provider == "builtin" and info.locale:
            parts.append(f"BUILTIN_LOCALE {quote_literal(info.locale)}")
    elif info.locale_provider != "libc":
        raise BackupctlError(
            f"database {info.name} uses the {info.locale_provider} locale provider, which the target "
            "server (before PostgreSQL 15) does not have: restore to a newer server"
        )
    if info.connection_limit != -1:
        parts.append(f"CONNECTION LIMIT {info.connection_limit}")
    if owner:
        parts.append(f"OWNER {quote_ident(owner)}")
    return " ".join(parts)


def database_properties_sql(
    info: DatabaseInfo, new_name: str, roles: set[str]
) -> tuple[list[str], list[str]]:
    """Privileges, settings and comment for the new database; and what had to be skipped (missing roles)."""
    statements: list[str] = []
    skipped: list[str] = []
    db = quote_ident(new_name)
    if info.acl is not None:
        statements.append(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
        for grant in info.acl:
            grantee = grant["grantee"]
            if grantee is not None and grantee not in roles:
                skipped.append(f"GRANT {grant['privilege']} to missing role {grantee}")
                continue
            option = " WITH GRANT OPTION" if grant["grantable"] else ""
            statements.append(f"GRANT {grant['privilege']} ON DATABASE {db} TO "
                              f"{'PUBLIC' if grantee is None else quote_ident(grantee)}{option}")
    for setting in info.settings:
        if setting["role"] and setting["role"] not in roles:
            skipped.append(f"setting {setting['name']} for missing role {setting['role']}")
            continue
        statements.append(setting_sql(new_name, setting))
    if info.comment:
        statements.append(f"COMMENT ON DATABASE {db} IS {quote_literal(info.comment)}")
    return statements, skipped


def restore_argv(binaries: PgBinaries, target_db: str, *, jobs: int, no_owner: bool, clean: bool,
                 schemas: tuple[str, ...], tables: tuple[str, ...], dump_file: str | None) -> list[str]:
    """pg_restore's command line; it reads the dump from stdin unless a staged file is given."""
    argv = [binaries.path("pg_restore"), "--no-password", "--exit-on-error",
            f"--dbname=dbname={quote_conninfo(target_db)}"]
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    if no_owner:
        argv += ["--no-owner", "--no-acl"]
    if clean:
        argv += ["--clean", "--if-exists"]
    argv += [f"--schema={s}" for s in schemas]
    argv += [f"--table={t}" for t in tables]
    if dump_file:
        argv.append(dump_file)
    return argv


def list_argv(binaries: PgBinaries) -> list[str]:
    """``pg_restore --list`` reading an archive from stdin: proves its header and table of contents."""
    return [binaries.path("pg_restore"), "--list"]


def apply_sql_argv(binaries: PgBinaries, dbname: str) -> list[str]:
    """psql applying a script from stdin, going on past errors (e.g. roles that already exist)."""
    return [binaries.path("psql"), "--no-psqlrc", "--no-password", "-v", "ON_ERROR_STOP=0", "-q",
            f"--dbname=dbname={quote_conninfo(dbname)}", "-f", "-"]


def user_objects(params: ConnParams, dbname: str) -> int:
    """How many objects a database holds outside the system schemas (0: empty, safe to restore into)."""
    with params.connect(dbname) as conn:
        return int(conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
        ).fetchone()[0])


def server_roles_and_version(params: ConnParams) -> tuple[set[str], int, set[str]]:
    """Roles and databases on a restore target, and its version."""
    with params.connect() as conn:
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        databases = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])
    return roles, version, databases



def _select_databases(server: ServerInfo, wanted: tuple[str, ...] | list[str],
                      source: PostgresSource) -> list[DatabaseInfo]:
    by_name = {d.name: d for d in server.databases}
    if not wanted:
        return list(server.databases)
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise BackupctlError(
            f"database {missing[0]} does not exist on source {source.name} or does not allow "
            f"connections (databases: {', '.join(sorted(by_name)) or 'none'})"
        )
    return [by_name[name] for name in wanted]


class LogicalEngine(Engine):
    """A PostgreSQL server's globals and databases as SQL-level dumps: portable across major versions."""

    name = "logical"
    source_kind = "postgres"
    backup_types = ("logical",)
    drill_checks = ("restore", "connect", "amcheck", "row_counts")
    schedule_jobs = ("logical",)

    def check_options(self, source: SourceConfig, options: BackupOptions) -> None:
        if options.export_json:
            raise ConfigError("--export-json applies to SQLite backups")

    def backup(self, repo: Repository, source: PostgresSource, backup_type: str, options: BackupOptions,
               start: StartRun) -> Manifest:
        """Globals, then one pg_dump per database, each streamed straight into the repository."""
        params = ConnParams.from_source(source)
        server = inspect_server(params)
        epochs.register_system(repo, source.name, server.system_identifier, server.major)
        selected = _select_databases(server, options.databases or source.databases, source)
        binaries = dump_binaries(source.bindir, server.major)
        run = start(backup_type)
        databases: dict[str, Any] = {}
        with run.cleanup_on_failure():
            run.expect(sum(info.size for info in selected))  # pg_database_size: a dump is usually smaller
            with globals_dump(binaries, params, source.role_passwords) as tool:
                run.store(layout.PG_GLOBALS, tool.stdout, tool.wait)
            for index, info in enumerate(selected):
                log.info("dumping database", backup_id=run.id, database=info.name, size=info.size)
                # Numbered, never named after the database: names are data, and may be secret.
                with snapshot_dump(binaries, params, info) as tool:
                    obj = run.store(layout.pg_database_dump(index), tool.stdout, tool.wait)
                databases[info.name] = {**info.to_json(), "object": obj.key}
            details = {
                "server_version": server.version,
                "pg_dump_version": binaries.version,
                "globals": run.objects[0].key,
                "databases": databases,
            }
            extra = {
                "pg_major": server.major,
                "pg_version_num": server.version_num,
                "system_identifier": server.system_identifier,
                "pg_dump_major": binaries.major,
                "databases": len(databases),
                **stop_clocks(repo, source.name, params),
            }
            return run.publish("postgres", details, extra, options)

    def dump_archives(self, details: dict[str, Any]) -> dict[str, str]:
        return {d["object"]: name for name, d in details["databases"].items()}
