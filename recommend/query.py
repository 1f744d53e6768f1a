"""``python -m recommend.query``: the named queries over the recommendations, in BigQuery or
locally on DuckDB with the same SQL.

    python -m recommend.query --list
    python -m recommend.query user_recommendations --param run_date=2024-05-01 \\
        --param model=timbre_cosine --param user_id=b80344d063b5ccb3212f76538f3d9e43d87dca9e \\
        --recommendations out/recommendations --songs out/features/songs
    python -m recommend.query top_songs --param run_date=2024-05-01 --param model=itemcf \\
        --project my-project --dataset music [--format csv]

Each query is one file in ``recommend/queries/NAME.sql``: BigQuery standard SQL with named
parameters (``@run_date``) and table placeholders (``{{recommendations}}``, ``{{songs}}``,
``{{listens}}``). A header of ``--`` comments describes it:

    -- What the query answers (any number of lines).
    -- param NAME TYPE[ = DEFAULT]: meaning          (TYPE: STRING INT64 FLOAT64 BOOL DATE)
    -- tables: recommendations, songs
    -- optional tables: listens                      (absent → an empty table, @has_listens FALSE)

User input never becomes SQL text: values travel as query parameters (BigQuery
``ScalarQueryParameter``; DuckDB prepared-statement parameters), and the placeholders are
replaced only by table names that matched a strict pattern, or by the fixed local view names.

- BigQuery (``--project`` and ``--dataset``): runs through ``google-cloud-bigquery``; the tables
  are ``PROJECT.DATASET.<name>`` (names changeable with ``--recommendations_table`` etc.).
- Locally (otherwise): the SQL is transpiled by sqlglot (BigQuery → DuckDB) and run by DuckDB
  over ``--recommendations DIR`` (the job's Parquet, one partition per run and model:
  ``DIR/run_date=YYYY-MM-DD/model=NAME/*.parquet``, hive-partitioned; the folder names give
  ``run_date`` and ``model``), ``--songs DIR`` (the feature pipeline's ``songs/`` Parquet) and
  ``--listens FILE`` (Taste Profile triplets, parsed by ``msd.listening``).

The queries that read one run take ``run_date`` and ``model`` (both required: the table holds
several models per day, and a query about one never sees another's rows); ``runs`` lists the
(run_date, model) partitions.
"""
from pipelines import cli

if __name__ == "__main__":  # before anything imports TensorFlow or Beam
    cli.quiet_native_logs()

import argparse
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import pathlib
import re
import sys
import tempfile
from typing import Any, Mapping, Optional, Sequence

QUERIES_DIR = pathlib.Path(__file__).resolve().parent / "queries"
TABLES = ("recommendations", "songs", "listens")
PARAMETER_TYPES = ("STRING", "INT64", "FLOAT64", "BOOL", "DATE")
FORMATS = ("table", "csv", "json")

# The relation that stands for an optional table nobody provided: same columns, no rows.
EMPTY_TABLES = {
    "listens": ("(SELECT CAST(NULL AS STRING) AS user_id, CAST(NULL AS STRING) AS song_id, "
                "CAST(NULL AS INT64) AS play_count LIMIT 0)"),
}

_QUERY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_PARAM_LINE = re.compile(
    r"param\s+(?P<name>[a-z_][a-z0-9_]*)\s+(?P<type>[A-Z0-9]+)"
    r"(?:\s*=\s*(?P<default>[^:]*?))?\s*(?::\s*(?P<description>.*))?$")
# BigQuery naming rules (project ids: 6–30 lowercase letters, digits, hyphens, optionally
# domain-scoped; datasets: letters, digits, underscores; tables: letters, digits, _ and -).
_PROJECT = re.compile(r"(?:[a-z][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_DATASET = re.compile(r"[A-Za-z0-9_]{1,1024}")
_TABLE = re.compile(r"[A-Za-z0-9_-]{1,1024}")
_DATE_FOLDER = re.compile(r"run_date=(\d{4}-\d{2}-\d{2})")
# The job's model names (recommend.models.base.MODEL_NAME), not imported: this tool stays light.
_MODEL_FOLDER = re.compile(r"model=[a-z][a-z0-9_]{0,62}")
_LAYOUT = "run_date=YYYY-MM-DD/model=NAME/*.parquet"
_CELL_CHARS = 60  # widest cell of --format table


class QueryError(Exception):
    """A problem the user can fix (unknown query, bad parameter, missing file); the message is
    one line that says what and how."""


@dataclasses.dataclass(frozen=True)
class QueryParameter:
    name: str
    type: str
    default: Optional[str]  # as written in the header; None = required
    description: str


@dataclasses.dataclass(frozen=True)
class NamedQuery:
    """One ``queries/NAME.sql`` file: its header, read, and its SQL template."""
    name: str
    description: str
    parameters: tuple[QueryParameter, ...]
    tables: tuple[str, ...]
    optional_tables: tuple[str, ...]
    sql: str  # with {{table}} placeholders

    @property
    def automatic_parameters(self) -> tuple[str, ...]:
        """``has_<table>`` (BOOL) for each optional table: set by the runner, not the user."""
        return tuple(f"has_{table}" for table in self.optional_tables)


@dataclasses.dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def available_queries() -> list[str]:
    """The names of the queries in ``recommend/queries``, sorted."""
    return sorted(path.stem for path in QUERIES_DIR.glob("*.sql"))


def parse_query_file(name: str, text: str) -> NamedQuery:
    """Reads the header of a query file and checks it against the SQL: every placeholder is a
    declared table, and the parameters the SQL uses are exactly the declared ones."""
    description_lines: list[str] = []
    parameters: list[QueryParameter] = []
    tables: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    lines = text.splitlines()
    body_start = 0
    for body_start, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith("--"):
            break
        content = stripped[2:].strip()
        if content.startswith("param "):
            match = _PARAM_LINE.match(content)
            if not match or match["type"] not in PARAMETER_TYPES:
                raise QueryError(f"query {name}: cannot read the header line {line.strip()!r} "
                                 f"(expected: -- param NAME TYPE[ = DEFAULT]: meaning, TYPE one "
                                 f"of {', '.join(PARAMETER_TYPES)})")
            parameters.append(QueryParameter(match["name"], match["type"], match["default"],
                                             (match["description"] or "").strip()))
        elif content.startswith("tables:"):
            tables = tuple(t.strip() for t in content[len("tables:"):].split(",") if t.strip())
        elif content.startswith("optional tables:"):
            optional = tuple(t.strip() for t in content[len("optional tables:"):].split(",")
                             if t.strip())
        else:
            description_lines.append(content)
    else:
        body_start = len(lines)
    sql = "\n".join(lines[body_start:]).strip()
    if not sql:
        raise QueryError(f"query {name}: the file holds no SQL")
    for table in tables + optional:
        if table not in TABLES:
            raise QueryError(f"query {name}: unknown table {table!r} (known: {', '.join(TABLES)})")
    for table in optional:
        if table not in EMPTY_TABLES:
            raise QueryError(f"query {name}: table {table!r} cannot be optional")
    placeholders = set(_PLACEHOLDER.findall(sql))
    if placeholders != set(tables) | set(optional):
        raise QueryError(f"query {name}: the SQL uses tables {sorted(placeholders)} but the "
                         f"header declares {sorted(set(tables) | set(optional))}")
    query = NamedQuery(name, " ".join(description_lines), tuple(parameters), tables, optional, sql)
    used = sql_parameters(render_sql(query, {t: t for t in tables + optional}))
    declared = {p.name for p in parameters} | set(query.automatic_parameters)
    if used != declared:
        raise QueryError(f"query {name}: the SQL uses parameters {sorted(used)} but the header "
                         f"declares {sorted(declared)}")
    for parameter in parameters:
        if parameter.default is not None:
            convert_value(name, parameter, parameter.default)  # a bad default fails here
    return query


def load_query(name: str) -> NamedQuery:
    """The named query, or a QueryError listing the known names."""
    if not _QUERY_NAME.fullmatch(name) or not (QUERIES_DIR / f"{name}.sql").is_file():
        raise QueryError(f"unknown query {name!r}; known queries: "
                         f"{', '.join(available_queries())}")
    return parse_query_file(name, (QUERIES_DIR / f"{name}.sql").read_text(encoding="utf-8"))


def sql_parameters(sql: str) -> set[str]:
    """The named parameters (``@name``) a BigQuery SQL text uses, found by parsing it."""
    import sqlglot
    from sqlglot import expressions

    try:
        tree = sqlglot.parse_one(sql, read="bigquery")
    except sqlglot.errors.ParseError as error:
        raise QueryError(f"the SQL does not parse as BigQuery SQL: {error}") from error
    names = set()
    for parameter in tree.find_all(expressions.Parameter):
        names.add(parameter.name)
    return names


def convert_value(query_name: str, parameter: QueryParameter, text: str) -> Any:
    """The typed value of ``--param name=text``, or a QueryError saying what was expected."""
    kind = parameter.type
    try:
        if kind == "STRING":
            return text
        if kind == "INT64":
            value = int(text.strip())
            if not -2**63 <= value < 2**63:
                raise ValueError
            return value
        if kind == "FLOAT64":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind == "BOOL":
            lowered = text.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError
            return lowered == "true"
        if kind == "DATE":
            return datetime.date.fromisoformat(text.strip())
    except ValueError:
        pass
    examples = {"INT64": "a whole number", "FLOAT64": "a finite number",
                "BOOL": "true or false", "DATE": "a date YYYY-MM-DD"}
    raise QueryError(f"query {query_name}: --param {parameter.name}={text!r} is not "
                     f"{examples.get(kind, kind)}")


def bind_parameters(query: NamedQuery, raw: Mapping[str, str],
                    available_tables: Sequence[str] = ()) -> dict[str, tuple[str, Any]]:
    """{name: (type, value)} for every parameter of the query: the user's values, typed, then
    the defaults, then the automatic ``has_<table>`` flags. Unknown or missing parameters are
    errors that list what the query takes."""
    declared = {p.name: p for p in query.parameters}
    unknown = sorted(set(raw) - set(declared))
    if unknown:
        raise QueryError(f"query {query.name} has no parameter {unknown[0]!r}; it takes: "
                         f"{_parameter_summary(query) or 'no parameters'}")
    bound: dict[str, tuple[str, Any]] = {}
    for parameter in query.parameters:
        if parameter.name in raw:
            text = raw[parameter.name]
        elif parameter.default is not None:
            text = parameter.default
        else:
            raise QueryError(f"query {query.name} needs --param {parameter.name}=… "
                             f"({parameter.type}: {parameter.description})")
        bound[parameter.name] = (parameter.type, convert_value(query.name, parameter, text))
    for table in query.optional_tables:
        bound[f"has_{table}"] = ("BOOL", table in available_tables)
    return bound


def _parameter_summary(query: NamedQuery) -> str:
    return ", ".join(f"{p.name} ({p.type}{'' if p.default is None else ' = ' + p.default})"
                     for p in query.parameters)


def render_sql(query: NamedQuery, table_refs: Mapping[str, str]) -> str:
    """The query's SQL with each ``{{table}}`` replaced by ``table_refs[table]``; the refs come
    from ``bigquery_table_refs`` or are fixed local names, never raw user text."""
    def replace(match: re.Match) -> str:
        return table_refs[match.group(1)]
    return _PLACEHOLDER.sub(replace, query.sql)


def bigquery_table_refs(query: NamedQuery, project: str, dataset: str,
                        table_names: Mapping[str, Optional[str]]) -> dict[str, str]:
    """Backtick-quoted ``project.dataset.table`` for each table the query reads, after checking
    every part against BigQuery's naming rules. An optional table whose name is None becomes an
    empty relation."""
    if not _PROJECT.fullmatch(project):
        raise QueryError(f"--project {project!r} is not a BigQuery project id (6–30 lowercase "
                         "letters, digits and hyphens, starting with a letter)")
    if not _DATASET.fullmatch(dataset):
        raise QueryError(f"--dataset {dataset!r} is not a BigQuery dataset name (letters, "
                         "digits and underscores)")
    refs = {}
    for table in query.tables + query.optional_tables:
        name = table_names.get(table)
        if name is None and table in query.optional_tables:
            refs[table] = EMPTY_TABLES[table]
            continue
        name = name or table
        if not _TABLE.fullmatch(name):
            raise QueryError(f"--{table}_table {name!r} is not a BigQuery table name (letters, "
                             "digits, _ and -)")
        refs[table] = f"`{project}.{dataset}.{name}`"
    return refs


def bigquery_job(query: NamedQuery, raw_params: Mapping[str, str], project: str, dataset: str,
                 table_names: Mapping[str, Optional[str]], *, dry_run: bool = False,
                 maximum_bytes_billed: Optional[int] = None) -> tuple[str, Any]:
    """The SQL text and the ``QueryJobConfig`` (standard SQL, typed named parameters) that run
    the query in BigQuery. Builds everything a job needs without any network call."""
    from google.cloud import bigquery

    refs = bigquery_table_refs(query, project, dataset, table_names)
    available = [t for t in query.optional_tables if table_names.get(t) is not None]
    bound = bind_parameters(query, raw_params, available)
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter(name, kind, value)
                          for name, (kind, value) in bound.items()],
        use_legacy_sql=False,
        dry_run=dry_run,
        labels={"query": query.name},
    )
    if maximum_bytes_billed is not None:
        config.maximum_bytes_billed = maximum_bytes_billed
    return render_sql(query, refs), config


def run_bigquery(query: NamedQuery, raw_params: Mapping[str, str], project: str, dataset: str,
                 table_names: Mapping[str, Optional[str]], *, location: Optional[str] = None,
                 dry_run: bool = False, maximum_bytes_billed: Optional[int] = None,
                 client: Any = None) -> QueryResult:
    """Runs the query in BigQuery and returns its rows (a dry run returns the bytes it would
    process). ``client`` is a ``bigquery.Client``; one is made for ``project`` when None."""
    sql, config = bigquery_job(query, raw_params, project, dataset, table_names,
                               dry_run=dry_run, maximum_bytes_billed=maximum_bytes_billed)
    if client is None:
        from google.auth import exceptions as auth_exceptions
        from google.cloud import bigquery
        try:
            client = bigquery.Client(project=project, location=location)
        except auth_exceptions.DefaultCredentialsError as error:
            raise QueryError(f"no Google Cloud credentials for BigQuery ({error.args[0]}); run "
                             "`gcloud auth application-default login` or leave out "
                             "--project/--dataset to query the local Parquet") from error
    from google.api_core import exceptions as api_exceptions
    try:
        job = client.query(sql, job_config=config, location=location)
        if dry_run:
            return QueryResult(["total_bytes_processed"], [(job.total_bytes_processed,)])
        result = job.result()
        columns = [field.name for field in result.schema]
        rows = [tuple(row.values()) for row in result]
    except api_exceptions.GoogleAPIError as error:
        message = getattr(error, "message", None) or str(error)
        raise QueryError(f"BigQuery refused query {query.name}: {message}") from error
    return QueryResult(columns, rows)


def to_duckdb_sql(sql: str) -> str:
    """BigQuery SQL → DuckDB SQL (sqlglot); ``@name`` parameters become ``$name``."""
    import sqlglot

    try:
        return sqlglot.transpile(sql, read="bigquery", write="duckdb",
                                 unsupported_level=sqlglot.ErrorLevel.RAISE)[0]
    except sqlglot.errors.SqlglotError as error:
        raise QueryError(f"sqlglot cannot translate the query to DuckDB: {error}") from error


def _is_remote(path: str) -> bool:
    return "://" in path


def _files_below(folder: str) -> list[tuple[tuple[str, ...], str]]:
    """Every file below ``folder`` (local or gs://, listed through Beam's file systems) as
    (its path parts relative to ``folder``, its full path), sorted by the parts."""
    from apache_beam.io.filesystems import FileSystems

    root = folder.rstrip("/") if _is_remote(folder) else os.path.normpath(folder)
    separator = "/" if _is_remote(folder) else os.sep
    found = []
    for metadata in FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list:
        relative = metadata.path[len(root):].lstrip(separator)
        if relative:
            found.append((tuple(relative.split(separator)), metadata.path))
    return sorted(found)


def _folder_exists(folder: str) -> bool:
    """A local folder, or on GCS (no folders) a prefix with at least one object below it."""
    from apache_beam.io.filesystems import FileSystems

    if not _is_remote(folder):
        return os.path.isdir(folder)
    return bool(FileSystems.match([folder.rstrip("/") + "/**"], limits=[1])[0].metadata_list)


def _file_exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path) if _is_remote(path) else os.path.isfile(path)


def recommendation_files(recommendations_dir: str) -> list[str]:
    """The Parquet files of every (run_date, model) partition under an output folder (local or
    gs://): ``run_date=YYYY-MM-DD/model=NAME/*.parquet``. Entries at the top that are not
    ``run_date=…`` (the ``_staging`` folder of an unfinished run, ``_reports``) and entries whose
    names start with ``_`` or ``.`` are not read; a ``run_date=…`` or ``model=…`` folder with a
    bad name, a folder in a day that is not ``model=NAME``, or Parquet files straight in a day
    folder (the one-model layout of earlier versions) is a QueryError naming it. Folders are
    known from the files below them (GCS has no folders): an empty folder is not seen."""
    if not _folder_exists(recommendations_dir):
        raise QueryError(f"--recommendations {recommendations_dir}: no such folder")
    root = recommendations_dir.rstrip("/") if _is_remote(recommendations_dir) else \
        os.path.normpath(recommendations_dir)
    separator = "/" if _is_remote(recommendations_dir) else os.sep
    name = lambda *parts: separator.join((root,) + parts)
    files = []
    for parts, path in _files_below(recommendations_dir):
        day = parts[0]
        if not day.startswith("run_date="):
            continue
        match = _DATE_FOLDER.fullmatch(day)
        valid_date = False
        if match:
            try:
                datetime.date.fromisoformat(match.group(1))
                valid_date = True
            except ValueError:
                pass
        if len(parts) == 1 or not valid_date:
            raise QueryError(f"{name(day)}: not a run_date=YYYY-MM-DD folder (expected the "
                             f"layout {_LAYOUT})")
        entry = parts[1]
        if entry.startswith(("_", ".")):
            continue
        if len(parts) == 2:
            if entry.endswith(".parquet"):
                raise QueryError(f"{name(day, entry)}: a Parquet file straight in a run_date "
                                 f"folder (the one-model layout); expected {_LAYOUT}")
            continue
        if not _MODEL_FOLDER.fullmatch(entry):
            raise QueryError(f"{name(day, entry)}: not a model=NAME folder (NAME: a lowercase "
                             f"letter, then up to 62 lowercase letters, digits or _; expected "
                             f"the layout {_LAYOUT})")
        if len(parts) == 3 and parts[2].endswith(".parquet"):
            files.append((name(day, entry), path))
    from pipelines import launcher

    # Each partition's published version (its _SUCCESS.json marker): files of an unfinished
    # or superseded publish are never read.
    files = [path for folder in sorted({folder for folder, _ in files})
             for path in launcher.partition_files(folder)]
    if not files:
        raise QueryError(f"--recommendations {recommendations_dir}: no Parquet files in "
                         f"{_LAYOUT} (the recommendation job's --output)")
    return files


def song_files(songs: str) -> list[str]:
    """The songs Parquet (local or gs://): a folder (``*.parquet`` in it), a feature-pipeline
    output folder (its ``songs/``), or one file."""
    from apache_beam.io.filesystems import FileSystems

    if _file_exists(songs):
        return [songs]
    if _folder_exists(songs):
        for folder in (songs, FileSystems.join(songs.rstrip("/"), "songs")):
            files = sorted(m.path for m in FileSystems.match(
                [FileSystems.join(folder.rstrip("/"), "*.parquet")])[0].metadata_list)
            if files:
                return files
        raise QueryError(f"--songs {songs}: no *.parquet files in it or in its songs/ folder")
    raise QueryError(f"--songs {songs}: no such file or folder")


def local_copies(paths: Sequence[str], root: str, workdir: str) -> list[str]:
    """``paths`` as local files DuckDB can read: local paths as they are; gs:// files copied
    (through Beam's file systems) into ``workdir``, keeping their path below ``root`` so that the
    hive folders (run_date=…/model=…) stay in the path."""
    from apache_beam.io.filesystems import FileSystems

    local = []
    for path in paths:
        if not _is_remote(path):
            local.append(path)
            continue
        relative = path[len(root.rstrip("/")):].lstrip("/") if path.startswith(root.rstrip("/")) \
            else path.rsplit("/", 1)[-1]
        target = os.path.join(workdir, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(path, compression_type="uncompressed") as source, \
                open(target, "wb") as out:
            while chunk := source.read(8 << 20):
                out.write(chunk)
        local.append(target)
    return local


def listens_table(path: str) -> tuple[Any, int]:
    """The listens file as an Arrow table (user_id, song_id, play_count), parsed by
    ``msd.listening``; and how many lines were rejected."""
    import pyarrow as pa
    from msd import listening

    if "://" not in path and not pathlib.Path(path).is_file():
        raise QueryError(f"--listens {path}: no such file")
    users, songs, counts = [], [], []
    rejected = 0
    for record in listening.read_listens(path):
        if isinstance(record, listening.Listen):
            users.append(record.user_id)
            songs.append(record.song_id)
            counts.append(record.play_count)
        else:
            rejected += 1
    table = pa.table({"user_id": pa.array(users, pa.string()),
                      "song_id": pa.array(songs, pa.string()),
                      "play_count": pa.array(counts, pa.int64())})
    return table, rejected


def _workdir(workdir: Optional[str]) -> str:
    if workdir is None:
        raise QueryError("gs:// inputs need a local working folder for their copies "
                         "(run_local gives one)")
    return workdir


def local_connection(query: NamedQuery, recommendations_dir: Optional[str],
                     songs: Optional[str], listens: Optional[str],
                     workdir: Optional[str] = None) -> Any:
    """A DuckDB connection with the views the query reads: ``recommendations`` (hive-partitioned
    Parquet, run_date as DATE; ``model`` from the folder name, which DuckDB puts in place of the
    files' own model column), ``songs`` and ``listens``. gs:// Parquet is first copied into
    ``workdir`` (a local folder the caller removes after the query)."""
    import duckdb

    connection = duckdb.connect()
    needed = set(query.tables) | set(query.optional_tables)
    if "recommendations" in needed:
        if not recommendations_dir:
            raise QueryError(f"query {query.name} reads the recommendations: pass "
                             "--recommendations DIR (the recommendation job's Parquet output)")
        files = recommendation_files(recommendations_dir)
        if _is_remote(recommendations_dir):
            files = local_copies(files, recommendations_dir,
                                 os.path.join(_workdir(workdir), "recommendations"))
        relation = connection.read_parquet(files, hive_partitioning=True)
        columns = relation.columns
        missing = [c for c in ("user_id", "model", "history_size", "popularity_filled",
                               "recommendations", "run_date") if c not in columns]
        if missing:
            raise QueryError(f"--recommendations {recommendations_dir}: the Parquet files lack "
                             f"the columns {missing}")
        relation.project("user_id, CAST(run_date AS DATE) AS run_date, "
                         "CAST(model AS VARCHAR) AS model, history_size, popularity_filled, "
                         "recommendations").create_view("recommendations")
    if "songs" in needed:
        if not songs:
            raise QueryError(f"query {query.name} reads the songs table: pass --songs DIR (the "
                             "feature pipeline's songs/ Parquet folder)")
        files = song_files(songs)
        if _is_remote(songs):
            files = local_copies(files, songs, os.path.join(_workdir(workdir), "songs"))
        relation = connection.read_parquet(files)
        missing = [c for c in ("track_id", "song_id", "artist_name", "title", "year")
                   if c not in relation.columns]
        if missing:
            raise QueryError(f"--songs {songs}: the Parquet files lack the columns {missing}")
        relation.create_view("songs")
    if "listens" in needed and listens:
        table, rejected = listens_table(listens)
        if rejected:
            print(f"query: {rejected:,} lines of {listens} were not valid listens and are left "
                  "out", file=sys.stderr)
        connection.register("listens", table)
    return connection


def run_local(query: NamedQuery, raw_params: Mapping[str, str], *,
              recommendations_dir: Optional[str] = None, songs: Optional[str] = None,
              listens: Optional[str] = None) -> QueryResult:
    """Runs the query on DuckDB over the local files: the same SQL, transpiled."""
    import duckdb

    available = ["listens"] if listens else []
    bound = bind_parameters(query, raw_params, available)
    refs = {table: table for table in query.tables}
    for table in query.optional_tables:
        refs[table] = table if table in available else EMPTY_TABLES[table]
    sql = to_duckdb_sql(render_sql(query, refs))
    with tempfile.TemporaryDirectory(prefix="msd_query_") as workdir:
        connection = local_connection(query, recommendations_dir, songs, listens, workdir)
        try:
            cursor = connection.execute(sql, {name: value for name, (_, value) in bound.items()})
            columns = [column[0] for column in cursor.description]
            rows = cursor.fetchall()
        except duckdb.Error as error:
            first_line = str(error).splitlines()[0]
            raise QueryError(f"DuckDB could not run query {query.name}: {first_line}") from error
        finally:
            connection.close()
    return QueryResult(columns, rows)


def _plain(value: Any) -> Any:
    """A cell as JSON-friendly data: dates as ISO text, NaN as None, nested values kept."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "items") and not isinstance(value, str):  # BigQuery Row-like
        return {key: _plain(item) for key, item in value.items()}
    return value


def _cell_text(value: Any, for_table: bool) -> str:
    value = _plain(value)
    if value is None:
        return "" if not for_table else "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if for_table else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def format_result(result: QueryResult, output_format: str) -> str:
    """The rows as an aligned text table, CSV (header first) or JSON (a list of objects)."""
    if output_format == "json":
        return json.dumps([{column: _plain(value) for column, value in zip(result.columns, row)}
                           for row in result.rows], indent=2, ensure_ascii=False)
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow([_cell_text(value, for_table=False) for value in row])
        return buffer.getvalue().rstrip("\n")
    if output_format != "table":
        raise QueryError(f"unknown format {output_format!r} (use {', '.join(FORMATS)})")
    cells = [[_cell_text(value, for_table=True) for value in row] for row in result.rows]
    cells = [[text if len(text) <= _CELL_CHARS else text[:_CELL_CHARS - 1] + "…"
              for text in row] for row in cells]
    widths = [max([len(column)] + [len(row[i]) for row in cells])
              for i, column in enumerate(result.columns)]
    numeric = [all(isinstance(_plain(row[i]), (int, float)) and not isinstance(row[i], bool)
                   for row in result.rows if row[i] is not None)
               for i in range(len(result.columns))]

    def line(texts: Sequence[str]) -> str:
        return "  ".join(text.rjust(width) if is_number else text.ljust(width)
                         for text, width, is_number in zip(texts, widths, numeric)).rstrip()

    out = [line(result.columns), "  ".join("-" * width for width in widths)]
    out.extend(line(row) for row in cells)
    out.append(f"({len(result.rows)} row{'' if len(result.rows) == 1 else 's'})")
    return "\n".join(out)


def describe_queries() -> str:
    """What ``--list`` prints: each query with its description, parameters and tables."""
    blocks = []
    for name in available_queries():
        query = load_query(name)
        lines = [name, f"    {query.description}"]
        for parameter in query.parameters:
            default = "" if parameter.default is None else f" = {parameter.default}"
            lines.append(f"    --param {parameter.name}=<{parameter.type}{default}>  "
                         f"{parameter.description}")
        tables = ", ".join(query.tables + tuple(f"{t} (optional)" for t in query.optional_tables))
        lines.append(f"    reads: {tables}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def parse_param_flags(flags: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings → {key: value}; a flag without ``=`` or given twice is an error."""
    params: dict[str, str] = {}
    for flag in flags:
        key, separator, value = flag.partition("=")
        key = key.strip()
        if not separator or not key:
            raise QueryError(f"--param {flag!r}: expected key=value")
        if key in params:
            raise QueryError(f"--param {key} is given twice")
        params[key] = value
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recommend.query",
        description="Run a named query over the recommendations: in BigQuery with --project "
                    "and --dataset, otherwise locally on DuckDB over the Parquet output.")
    parser.add_argument("name", nargs="?", help="the query (see --list)")
    parser.add_argument("--list", action="store_true", help="list the queries and their "
                        "parameters, then exit")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a query parameter; repeat for several")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--print_sql", action="store_true",
                        help="print the SQL that would run (and its parameters) instead of "
                             "running it")
    local = parser.add_argument_group("local (DuckDB)")
    local.add_argument("--recommendations", metavar="DIR",
                       help="the recommendation job's Parquet output (run_date=…/model=…/ "
                            "folders)")
    local.add_argument("--songs", metavar="DIR", help="the feature pipeline's songs/ Parquet "
                       "folder (or its output folder)")
    local.add_argument("--listens", metavar="FILE", help="listens triplets, for the "
                       "data_quality check that no listened song is recommended")
    remote = parser.add_argument_group("BigQuery")
    remote.add_argument("--project", help="Google Cloud project that runs the query and holds "
                        "the dataset")
    remote.add_argument("--dataset", help="BigQuery dataset holding the tables")
    remote.add_argument("--recommendations_table", default=None,
                        help="table name of the recommendations (default: recommendations)")
    remote.add_argument("--songs_table", default=None,
                        help="table name of the songs metadata (default: songs)")
    remote.add_argument("--listens_table", default=None,
                        help="table name of the listens (user_id, song_id, play_count); "
                             "without it the listened-song check is skipped")
    remote.add_argument("--location", default=None, help="BigQuery location (e.g. US, EU)")
    remote.add_argument("--dry_run", action="store_true",
                        help="ask BigQuery how many bytes the query would read; run nothing")
    remote.add_argument("--maximum_bytes_billed", type=int, default=None,
                        help="fail the query instead of billing more than this many bytes")
    return parser


def main(argv: Optional[Sequence[str]] = None, debug: bool = False) -> int:
    """The command line: 0 on success, 1 with one line ``query: error: …`` on an expected
    failure (a bad query or parameter, a missing file, a corrupt Parquet file DuckDB cannot
    read), 2 for bad usage. Started by ``cli.run_main`` (``python -m recommend.query``): any
    other failure ends with one line too, and ``debug`` (``--debug``) shows the tracebacks."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list:
            print(describe_queries())
            return 0
        if not args.name:
            parser.error("give a query name (see --list)")
        query = load_query(args.name)
        params = parse_param_flags(args.param)
        if bool(args.project) != bool(args.dataset):
            raise QueryError("BigQuery needs both --project and --dataset (leave both out to "
                             "query the local Parquet)")
        if args.project:
            table_names = {"recommendations": args.recommendations_table,
                           "songs": args.songs_table, "listens": args.listens_table}
            if args.print_sql:
                sql, config = bigquery_job(query, params, args.project, args.dataset,
                                           table_names)
                print(sql)
                for parameter in config.query_parameters:
                    print(f"-- @{parameter.name} {parameter.type_} = {parameter.value!r}")
                return 0
            result = run_bigquery(query, params, args.project, args.dataset, table_names,
                                  location=args.location, dry_run=args.dry_run,
                                  maximum_bytes_billed=args.maximum_bytes_billed)
        else:
            if args.print_sql:
                available = ["listens"] if args.listens else []
                refs = {t: t for t in query.tables}
                refs.update({t: t if t in available else EMPTY_TABLES[t]
                             for t in query.optional_tables})
                print(to_duckdb_sql(render_sql(query, refs)))
                for name, (kind, value) in bind_parameters(query, params, available).items():
                    print(f"-- ${name} {kind} = {value!r}")
                return 0
            result = run_local(query, params, recommendations_dir=args.recommendations,
                               songs=args.songs, listens=args.listens)
        print(format_result(result, args.format))
        return 0
    except QueryError as error:
        print(f"query: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (e.g. `| head`) stopped early: not an error. Point stdout at devnull so
        # that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        print(f"query: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    except Exception as error:  # DuckDB's (a corrupt Parquet file, a bad table) and the rest
        import duckdb

        if not isinstance(error, duckdb.Error) or debug:
            raise  # cli.run_main: one line, or the traceback with --debug
        print(f"query: error: DuckDB: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    _debug = cli.debugging()  # run_main takes --debug out of sys.argv
    cli.run_main("query", lambda: main(debug=_debug))
