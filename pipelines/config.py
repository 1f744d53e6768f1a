"""``--config FILE``: ready option sets (YAML, flag name → value) that explicit flags override.

Both jobs call ``expand_config(argv)`` before parsing options, so a config may hold any of the
job's own flags and Beam's (runner, project, region, machine type, …).
"""
import argparse
from typing import Sequence

import yaml
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions


class ConfigError(ValueError):
    """A config file that cannot be used, with the file named."""


def _flags_given(argv: Sequence[str]) -> set[str]:
    return {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}


def config_to_flags(config: dict, source: str) -> list[str]:
    """Turns ``{flag: value}`` into ``--flag=value`` (lists repeat the flag; true → bare flag)."""
    flags = []
    for name, value in config.items():
        if not isinstance(name, str) or name.startswith("-"):
            raise ConfigError(f"{source}: option names are plain flag names, got {name!r}")
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is True:
                flags.append(f"--{name}")
            elif item is False or item is None:
                continue
            elif isinstance(item, (dict, list)):
                raise ConfigError(f"{source}: option {name!r} must be a scalar or a list of scalars")
            else:
                flags.append(f"--{name}={item}")
    return flags


def expand_config(argv: Sequence[str]) -> list[str]:
    """Replaces ``--config FILE`` with the file's flags; flags given explicitly win."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    known, rest = parser.parse_known_args(list(argv))
    if not known.config:
        return list(rest)
    try:
        with FileSystems.open(known.config) as handle:
            config = yaml.safe_load(handle.read().decode("utf-8")) or {}
    except Exception as error:
        raise ConfigError(f"cannot read --config {known.config}: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{known.config}: expected a mapping of option names to values")
    explicit = _flags_given(rest)
    from_file = {name: value for name, value in config.items() if name not in explicit}
    return config_to_flags(from_file, known.config) + list(rest)


class OutputOptions(PipelineOptions):
    """Output options both jobs share (Beam registers every options class in one parser, so a
    flag is defined once)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--num_shards", type=int, default=0,
                            help="Shards per file output (0: let the runner decide).")


def add_shared_argument(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    """Adds a flag several jobs define, unless another options class added it already: Beam
    registers every options class in one parser, and argparse refuses a flag twice. Jobs that
    share a flag share its one definition (``LISTENING_FLAGS``)."""
    if flag not in parser._option_string_actions:  # pylint: disable=protected-access
        parser.add_argument(flag, **kwargs)


def add_listening_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the jobs that read listening data (recommend, train)."""
    from msd import listening

    add_shared_argument(
        parser, "--listens", action="append", default=None,
        help="Listening files: Taste Profile triplets user<TAB>song<TAB>count or CSV "
             "user_id,song_id,listen_count. Repeat for several.")
    add_shared_argument(
        parser, "--features", default=None,
        help="The feature pipeline's --output_dir, or a pattern of its TFRecord (*.tfrecord.gz) "
             "or CSV (*.csv) shards; local or gs://. recommend: the content model's catalogue "
             "(with --model_dir: where track ids come from); train: only its songs are used.")
    add_shared_argument(
        parser, "--song_to_tracks", default=None,
        help="taste_profile_song_to_tracks.txt; without it songs are joined on the song_id "
             "carried in the features.")
    add_shared_argument(parser, "--mismatches", default=None,
                        help="sid_mismatches.txt: song–track pairs to drop.")
    add_shared_argument(
        parser, "--max_play_count", type=int, default=listening.DEFAULT_MAX_PLAY_COUNT,
        help="Listens with a larger play count are rejected as corrupt.")
    add_shared_argument(
        parser, "--model", default=None,
        help="recommend: the model name recorded with every row and naming the partition "
             "(default: timbre_cosine for --features, the model's kind for --model_dir); "
             "train: the model to train (itemcf, als).")


def add_output_dir_argument(parser: argparse.ArgumentParser) -> None:
    add_shared_argument(parser, "--output_dir",
                        help="Where the job writes (local or gs://): features: every output; "
                             "train: the model directory.")


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    add_shared_argument(
        parser, "--overwrite", nargs="?", const=True, default=False, type=flag_value,
        help="Replace the outputs of an earlier run in --output_dir (--overwrite or "
             "--overwrite=true).")


def flag_value(text: str) -> bool:
    """A boolean flag's value: ``--flag`` alone, ``--flag=true`` or ``--flag=false`` (Flex
    Template launchers always pass name=value)."""
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def is_staging_only(options: PipelineOptions) -> bool:
    """A dry run or a template launch: the job is built (and staged), not run here, so there
    are no results to wait for, publish or summarise."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions

    return bool(options.view_as(TestOptions).dry_run
                or options.view_as(GoogleCloudOptions).template_location)
