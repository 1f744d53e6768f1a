"""Parses the Taste Profile / MSD Challenge listening files into records, or into rejections
that say in words why a line could not be used. Pure Python (no Beam) so the pipeline can call
it per line and tests can call it directly; only the ``read_*`` helpers touch Beam's
``FileSystems`` (local paths and gs:// alike).

Nothing here raises on bad input: every unusable line becomes a ``Rejection`` with a stable
``reason`` code (for counters and dead-letter queries) and a ``detail`` sentence for a person.

Blank lines (and the CSV header) are not data: ``parse_listen_line`` returns ``None`` for them,
and the side-file parsers skip them. Lines may be ``str`` or ``bytes``; bytes are decoded as
UTF-8 here so that a bad byte rejects one line instead of failing a whole read (Beam's
``ReadFromText`` with its default coder raises on bad UTF-8; pass ``coder=BytesCoder()`` and hand
the bytes to these functions).

Reason codes:
- ``bad_utf8``: the line is not valid UTF-8.
- ``line_too_long``: more than ``max_line_chars`` characters; rejected before being split.
- ``wrong_field_count``: not the number of fields the format has.
- ``empty_user_id``, ``bad_user_id``: missing, or not the expected shape (40 hex characters by
  default; see ``user_id_pattern``).
- ``empty_song_id``, ``bad_song_id``: missing, or not ``SO`` + 16 characters [A-Z0-9].
- ``bad_track_id``: not ``TR`` + 16 characters [A-Z0-9].
- ``bad_play_count``: not a whole number; ``non_positive_play_count``: 0 or negative;
  ``play_count_too_large``: above ``max_play_count``.
- ``bad_index``: a kaggle_songs index that is not a positive whole number;
  ``indices_not_contiguous``: the kept indices are not exactly 1..n (one file-level rejection).
- ``duplicate_user_id``, ``duplicate_song_id``, ``duplicate_index``, ``duplicate_track_id``:
  seen before in the same file; the first occurrence is kept.
- ``unrecognised_line``: a sid_mismatches line not of the form ``ERROR: <SO… TR…> …``.
"""
import bz2
import dataclasses
import gzip
import lzma
import re
import zlib
from typing import Any, Generic, Iterable, Iterator, NamedTuple, Optional, TypeVar, Union

# The Taste Profile's largest play count is below 10,000; anything above this cap is taken to
# be corrupt (or a bot) rather than listening.
DEFAULT_MAX_PLAY_COUNT = 100_000
# Real lines are under 100 characters (unique_tracks: a few hundred); the cap keeps a broken
# file with no newlines from being split into fields in memory.
DEFAULT_MAX_LINE_CHARS = 10_000
# How much of a rejected line is kept in the dead letter.
RAW_CHARS_KEPT = 200

TASTE_PROFILE_USER_ID = re.compile(r"[0-9a-fA-F]{40}")
SONG_ID = re.compile(r"SO[A-Z0-9]{16}")
TRACK_ID = re.compile(r"TR[A-Z0-9]{16}")
# A well-formed listens line, as nearly all are: matched in one go, the full checks run only
# when this fails. The backreference keeps one delimiter per line.
_WELL_FORMED_LISTEN = re.compile(
    r"([0-9a-fA-F]{40})([\t,])(SO[A-Z0-9]{16})\2([1-9][0-9]{0,8})\r?\n?")
_WELL_FORMED_LISTEN_BYTES = re.compile(_WELL_FORMED_LISTEN.pattern.encode("ascii"))
_WELL_FORMED_MAX_CHARS = 40 + 1 + 18 + 1 + 9 + 2  # the longest line that pattern matches
_SID_MISMATCH = re.compile(r"ERROR: <(SO[A-Z0-9]{16}) (TR[A-Z0-9]{16})>")

# Header field names of the CSV copies (and a tab-separated variant), compared lower-cased.
_HEADER_FIELDS = frozenset({
    ("user_id", "song_id", "listen_count"),
    ("user_id", "song_id", "play_count"),
})
_BOM = "\ufeff"
# What is stripped around a listens line: not tabs, which would shift the fields of a
# tab-separated line that has an empty first or last field.
_LISTEN_LINE_STRIP = " \r\n\f\v"
_UNIQUE_TRACKS_SEP = "<SEP>"
_DETAIL_VALUE_CHARS = 60  # how much of an offending value a detail sentence quotes


class Listen(NamedTuple):
    """One (user, song, play count) triplet. A NamedTuple: cheap to build 48M times.

    ``source`` is the file it was read from (the parser's ``source``), so that a listen
    rejected after parsing (an unknown song) still names its file. It costs one pointer per
    listen (72 bytes instead of 64): the lines of a file share the one path string their
    reader hands out, and listens are not held in bulk (the grouping keeps track ids and
    counts only)."""
    user_id: str
    song_id: str
    play_count: int
    source: str = ""


class Track(NamedTuple):
    """One line of unique_tracks.txt."""
    track_id: str
    song_id: str
    artist_name: str
    title: str


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A line (or, with ``line_number`` None and an empty ``raw``, a whole file) not used.

    ``raw`` is the line as read, cut to ``RAW_CHARS_KEPT`` characters; ``source`` and
    ``line_number`` are whatever context the caller had (Beam's text source knows no line
    numbers, so there they are usually a file pattern and None).
    """
    reason: str
    detail: str
    raw: str = ""
    source: str = ""
    line_number: Optional[int] = None

    def to_json_dict(self) -> dict:
        return dataclasses.asdict(self)


T = TypeVar("T")


@dataclasses.dataclass
class ParsedFile(Generic[T]):
    """What a side-file parser kept (``data``), what it rejected and why, and how many lines
    it read (blank ones included), so that kept + rejected + blank can be reconciled."""
    data: T
    rejections: list[Rejection]
    lines_read: int


def _quote(value: str) -> str:
    """A value for a detail sentence: repr, cut short."""
    if len(value) > _DETAIL_VALUE_CHARS:
        return repr(value[:_DETAIL_VALUE_CHARS]) + "…"
    return repr(value)


def _is_default_user_id(pattern: Optional[re.Pattern]) -> bool:
    # "==" as well: a pattern pickled to a Beam worker may come back as another object.
    return pattern is TASTE_PROFILE_USER_ID or pattern == TASTE_PROFILE_USER_ID


def _expected_user_id(pattern: re.Pattern) -> str:
    if _is_default_user_id(pattern):
        return "is not 40 hexadecimal characters"
    return f"does not match the pattern {pattern.pattern!r}"


def _raw_text(line: Union[str, bytes]) -> str:
    if isinstance(line, bytes):
        return line[:RAW_CHARS_KEPT].decode("utf-8", errors="backslashreplace")
    return line[:RAW_CHARS_KEPT]


def _reject(reason: str, detail: str, line: Union[str, bytes], source: str,
            line_number: Optional[int]) -> Rejection:
    return Rejection(reason=reason, detail=detail, raw=_raw_text(line), source=source,
                     line_number=line_number)


def _clean(line: Union[str, bytes], source: str, line_number: Optional[int],
           max_line_chars: int, strip_chars: Optional[str] = None) -> Union[str, Rejection, None]:
    """The line decoded and stripped (ends and a UTF-8 BOM), None when blank, or a Rejection
    (bad UTF-8, too long). The length is checked before anything copies the line."""
    if isinstance(line, bytes):
        # A UTF-8 character is at most 4 bytes: longer than this cannot be within the cap.
        if len(line) > 4 * max_line_chars:
            return _reject("line_too_long", f"the line has {len(line):,} bytes, more than the "
                           f"limit of {max_line_chars:,} characters", line, source, line_number)
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as error:
            return _reject("bad_utf8", f"the line is not valid UTF-8 (byte {error.start}: "
                           f"{error.reason})", line, source, line_number)
    if len(line) > max_line_chars:
        return _reject("line_too_long", f"the line has {len(line):,} characters, more than the "
                       f"limit of {max_line_chars:,}", line, source, line_number)
    text = line.strip(strip_chars)
    if text[:1] == _BOM:
        text = text[1:].strip(strip_chars)
    if not text or (strip_chars is not None and text.isspace()):
        return None
    return text


def is_header(line: Union[str, bytes]) -> bool:
    """True for the header line of the CSV copies (``user_id,song_id,listen_count``, also with
    ``play_count``, tabs, a BOM, CRLF or different case): a header is skipped, not rejected."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    if len(line) > 200:
        return False
    text = line.strip().lstrip(_BOM).strip().lower()
    separator = "\t" if "\t" in text else ","
    return tuple(field.strip() for field in text.split(separator)) in _HEADER_FIELDS


def detect_delimiter(line: Union[str, bytes]) -> Optional[str]:
    """The field separator a listens line uses: ``"\\t"`` (Taste Profile triplets), ``","``
    (the CSV copies), or None when the line has neither."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    return None


def _check_play_count(text: str, max_play_count: int) -> Union[int, tuple[str, str]]:
    """The play count as an int, or (reason, detail). Only ASCII digits count: ``int()`` alone
    would also take '1_000', '+3', '٣' or a 10,000-digit string (which it refuses to convert)."""
    if text.isdigit() and text.isascii():
        if len(text) > 18 and len(text.lstrip("0")) > 18:
            # Far above any cap; int() of thousands of digits is slow, or refused.
            return ("play_count_too_large",
                    f"play count {_quote(text)} is above the limit of {max_play_count:,}")
        count = int(text)
        if count == 0:
            return "non_positive_play_count", "play count is 0; a listen is counted at least once"
        if count > max_play_count:
            return ("play_count_too_large",
                    f"play count {count:,} is above the limit of {max_play_count:,}")
        return count
    if not text:
        return "bad_play_count", "play count is empty"
    if text[0] == "-" and text[1:].isdigit() and text[1:].isascii():
        return ("non_positive_play_count",
                f"play count {_quote(text)} is negative; a listen is counted at least once")
    return "bad_play_count", f"play count {_quote(text)} is not a whole number"


def parse_listen_line(line: Union[str, bytes], *, source: str = "",
                      line_number: Optional[int] = None,
                      user_id_pattern: Optional[re.Pattern] = TASTE_PROFILE_USER_ID,
                      max_play_count: int = DEFAULT_MAX_PLAY_COUNT,
                      max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                      ) -> Union[Listen, Rejection, None]:
    """One line of listens, in either format: Taste Profile triplets ``user\\tsong\\tcount`` or
    the CSV copies ``user,song,count`` (detected per line: Beam's text source does not say
    which file or position a line came from).

    Returns a ``Listen``; a ``Rejection`` with a reason code; or None for a line that is not
    data (blank, or the CSV header). ``source`` is copied into the Listen and rejections,
    ``line_number`` into rejections. ``user_id_pattern=None`` accepts any non-empty user id without whitespace
    (other data sets have other user ids).
    """
    if _is_default_user_id(user_id_pattern) and max_line_chars >= _WELL_FORMED_MAX_CHARS:
        if type(line) is str:
            match = _WELL_FORMED_LISTEN.fullmatch(line)
            if match is not None:
                user_id, _, song_id, count_text = match.groups()
                count = int(count_text)
                if count <= max_play_count:
                    return Listen(user_id, song_id, count, source)
        elif type(line) is bytes:
            match = _WELL_FORMED_LISTEN_BYTES.fullmatch(line)
            if match is not None:
                user_id, _, song_id, count_text = match.groups()
                count = int(count_text)
                if count <= max_play_count:
                    return Listen(user_id.decode("ascii"), song_id.decode("ascii"), count,
                                  source)

    text = _clean(line, source, line_number, max_line_chars, _LISTEN_LINE_STRIP)
    if text is None or type(text) is Rejection:
        return text
    if "\t" in text:
        fields = text.split("\t")
    else:
        fields = text.split(",")
    if len(fields) != 3:
        return _reject("wrong_field_count", f"expected 3 fields (user id, song id, play count) "
                       f"separated by tabs or commas, found {len(fields)}", line, source,
                       line_number)
    user_id, song_id, count_text = fields
    user_id = user_id.strip()
    song_id = song_id.strip()
    count_text = count_text.strip()

    # The header is looked for only once a field fails its check: free for the good lines.
    if not user_id:
        return _reject("empty_user_id", "the user id is empty", line, source, line_number)
    if user_id_pattern is not None:
        if not user_id_pattern.fullmatch(user_id):
            if is_header(text):
                return None
            return _reject("bad_user_id", f"user id {_quote(user_id)} "
                           f"{_expected_user_id(user_id_pattern)}", line, source, line_number)
    elif not user_id.isprintable() or " " in user_id:
        return _reject("bad_user_id", f"user id {_quote(user_id)} contains whitespace or "
                       f"control characters", line, source, line_number)

    if not SONG_ID.fullmatch(song_id):
        if not song_id:
            return _reject("empty_song_id", "the song id is empty", line, source, line_number)
        if is_header(text):
            return None
        return _reject("bad_song_id", f"song id {_quote(song_id)} is not 'SO' followed by 16 "
                       f"characters A-Z/0-9", line, source, line_number)

    count = _check_play_count(count_text, max_play_count)
    if type(count) is tuple:
        return _reject(count[0], count[1], line, source, line_number)
    return Listen(user_id, song_id, count, source)


def parse_listen_lines(lines: Iterable[Union[str, bytes]], *, source: str = "",
                       **options: Any) -> Iterator[Union[Listen, Rejection]]:
    """Every line of a listens file (local use and tests): Listens and Rejections with line
    numbers; blank lines and headers are left out. ``options`` go to ``parse_listen_line``."""
    for line_number, line in enumerate(lines, 1):
        record = parse_listen_line(line, source=source, line_number=line_number, **options)
        if record is not None:
            yield record


def _cleaned_lines(lines: Iterable[Union[str, bytes]], rejections: list[Rejection], source: str,
                   max_line_chars: int, counter: list[int],
                   strip_chars: Optional[str] = None,
                   ) -> Iterator[tuple[int, str, Union[str, bytes]]]:
    """(line number, cleaned text, raw line) for each non-blank usable line; bad UTF-8 and
    over-long lines go to ``rejections``. ``counter[0]`` ends as the number of lines read."""
    line_number = 0
    for line_number, line in enumerate(lines, 1):
        text = _clean(line, source, line_number, max_line_chars, strip_chars)
        if text is None:
            continue
        if type(text) is Rejection:
            rejections.append(text)
            continue
        yield line_number, text, line
    counter[0] = line_number


def parse_kaggle_users(lines: Iterable[Union[str, bytes]], *, source: str = "",
                       user_id_pattern: Optional[re.Pattern] = TASTE_PROFILE_USER_ID,
                       max_line_chars: int = DEFAULT_MAX_LINE_CHARS) -> ParsedFile[list[str]]:
    """kaggle_users.txt: one user id per line; the order is the submission's, so ``data`` is the
    list of user ids in file order. A repeated user is rejected (the first place is kept)."""
    rejections: list[Rejection] = []
    counter = [0]
    first_line_of_user: dict[str, int] = {}
    user_ids: list[str] = []
    for line_number, text, line in _cleaned_lines(lines, rejections, source, max_line_chars,
                                                  counter):
        if user_id_pattern is not None and not user_id_pattern.fullmatch(text):
            rejections.append(_reject("bad_user_id", f"user id {_quote(text)} "
                                      f"{_expected_user_id(user_id_pattern)}", line, source,
                                      line_number))
        elif user_id_pattern is None and (not text.isprintable() or " " in text):
            rejections.append(_reject("bad_user_id", f"user id {_quote(text)} contains "
                                      "whitespace or control characters", line, source,
                                      line_number))
        elif text in first_line_of_user:
            rejections.append(_reject("duplicate_user_id", f"user id {text} is already on line "
                                      f"{first_line_of_user[text]}; the first place is kept",
                                      line, source, line_number))
        else:
            first_line_of_user[text] = line_number
            user_ids.append(text)
    return ParsedFile(user_ids, rejections, counter[0])


def parse_kaggle_songs(lines: Iterable[Union[str, bytes]], *, source: str = "",
                       max_line_chars: int = DEFAULT_MAX_LINE_CHARS) -> ParsedFile[dict[str, int]]:
    """kaggle_songs.txt: ``SOxxxxxxxxxxxxxxxx <index>`` → ``data`` = {song id: 1-based index},
    the numbering a submission uses. Repeated songs or indices are rejected (first kept); if
    the kept indices are not exactly 1..n, one file-level rejection says which are off."""
    rejections: list[Rejection] = []
    counter = [0]
    index_by_song: dict[str, int] = {}
    line_of_index: dict[int, int] = {}
    line_of_song: dict[str, int] = {}
    for line_number, text, line in _cleaned_lines(lines, rejections, source, max_line_chars,
                                                  counter):
        fields = text.split()
        if len(fields) != 2:
            rejections.append(_reject("wrong_field_count", f"expected 2 fields (song id, index) "
                                      f"separated by a space, found {len(fields)}", line, source,
                                      line_number))
            continue
        song_id, index_text = fields
        if not SONG_ID.fullmatch(song_id):
            rejections.append(_reject("bad_song_id", f"song id {_quote(song_id)} is not 'SO' "
                                      "followed by 16 characters A-Z/0-9", line, source,
                                      line_number))
            continue
        if not (index_text.isdigit() and index_text.isascii() and len(index_text) < 19
                and int(index_text) > 0):
            rejections.append(_reject("bad_index", f"index {_quote(index_text)} is not a "
                                      "positive whole number", line, source, line_number))
            continue
        index = int(index_text)
        if song_id in line_of_song:
            rejections.append(_reject("duplicate_song_id", f"song id {song_id} is already on "
                                      f"line {line_of_song[song_id]}; the first is kept", line,
                                      source, line_number))
            continue
        if index in line_of_index:
            rejections.append(_reject("duplicate_index", f"index {index} is already used on line "
                                      f"{line_of_index[index]}; the first is kept", line, source,
                                      line_number))
            continue
        line_of_song[song_id] = line_number
        line_of_index[index] = line_number
        index_by_song[song_id] = index
    count = len(index_by_song)
    if count and (min(line_of_index) != 1 or max(line_of_index) != count):
        # Indices are unique, so 1..n exactly iff min is 1 and max is n.
        missing = [i for i in range(1, count + 1) if i not in line_of_index]
        above = sorted(i for i in line_of_index if i > count)
        rejections.append(Rejection(
            reason="indices_not_contiguous",
            detail=(f"the {count:,} indices kept should be exactly 1..{count:,}; "
                    f"{len(missing):,} missing (first: {missing[:5]}), {len(above):,} above "
                    f"{count:,} (first: {above[:5]})"),
            source=source))
    return ParsedFile(index_by_song, rejections, counter[0])


def parse_song_to_tracks(lines: Iterable[Union[str, bytes]], *, source: str = "",
                         max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                         ) -> ParsedFile[dict[str, list[str]]]:
    """taste_profile_song_to_tracks.txt: a song id then zero or more track ids, tab-separated →
    ``data`` = {song id: [track ids]} (an empty list for a song with no track). A line with any
    bad id is rejected whole; a repeated song is rejected (the first is kept)."""
    rejections: list[Rejection] = []
    counter = [0]
    tracks_by_song: dict[str, list[str]] = {}
    line_of_song: dict[str, int] = {}
    for line_number, text, line in _cleaned_lines(lines, rejections, source, max_line_chars,
                                                  counter):
        fields = text.split("\t")
        song_id = fields[0].strip()
        if not SONG_ID.fullmatch(song_id):
            rejections.append(_reject("bad_song_id", f"song id {_quote(song_id)} is not 'SO' "
                                      "followed by 16 characters A-Z/0-9", line, source,
                                      line_number))
            continue
        track_ids = [field.strip() for field in fields[1:]]
        bad = next((track for track in track_ids if not TRACK_ID.fullmatch(track)), None)
        if bad is not None:
            rejections.append(_reject("bad_track_id", f"track id {_quote(bad)} is not 'TR' "
                                      "followed by 16 characters A-Z/0-9", line, source,
                                      line_number))
            continue
        if song_id in line_of_song:
            rejections.append(_reject("duplicate_song_id", f"song id {song_id} is already on "
                                      f"line {line_of_song[song_id]}; the first is kept", line,
                                      source, line_number))
            continue
        line_of_song[song_id] = line_number
        tracks_by_song[song_id] = track_ids
    return ParsedFile(tracks_by_song, rejections, counter[0])


def parse_unique_tracks(lines: Iterable[Union[str, bytes]], *, source: str = "",
                        max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                        ) -> ParsedFile[dict[str, Track]]:
    """unique_tracks.txt: ``track_id<SEP>song_id<SEP>artist_name<SEP>title`` (``<SEP>`` is
    literal text) → ``data`` = {track id: Track}. Artist and title are kept as written (only the
    line break is removed; they may be empty); a ``<SEP>`` inside a title stays in the title."""
    rejections: list[Rejection] = []
    counter = [0]
    tracks: dict[str, Track] = {}
    line_of_track: dict[str, int] = {}
    for line_number, text, line in _cleaned_lines(lines, rejections, source, max_line_chars,
                                                  counter, strip_chars="\r\n"):
        fields = text.split(_UNIQUE_TRACKS_SEP, 3)
        if len(fields) != 4:
            rejections.append(_reject("wrong_field_count", "expected 4 fields (track id, song "
                                      f"id, artist, title) separated by '<SEP>', found "
                                      f"{len(fields)}", line, source, line_number))
            continue
        track_id, song_id, artist_name, title = fields
        track_id = track_id.strip()
        song_id = song_id.strip()
        if not TRACK_ID.fullmatch(track_id):
            rejections.append(_reject("bad_track_id", f"track id {_quote(track_id)} is not 'TR' "
                                      "followed by 16 characters A-Z/0-9", line, source,
                                      line_number))
            continue
        if not SONG_ID.fullmatch(song_id):
            rejections.append(_reject("bad_song_id", f"song id {_quote(song_id)} is not 'SO' "
                                      "followed by 16 characters A-Z/0-9", line, source,
                                      line_number))
            continue
        if track_id in line_of_track:
            rejections.append(_reject("duplicate_track_id", f"track id {track_id} is already on "
                                      f"line {line_of_track[track_id]}; the first is kept", line,
                                      source, line_number))
            continue
        line_of_track[track_id] = line_number
        tracks[track_id] = Track(track_id, song_id, artist_name, title)
    return ParsedFile(tracks, rejections, counter[0])


def parse_sid_mismatches(lines: Iterable[Union[str, bytes]], *, source: str = "",
                         max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                         ) -> ParsedFile[set[tuple[str, str]]]:
    """sid_mismatches.txt: ``ERROR: <SOxxxxxxxxxxxxxxxx TRxxxxxxxxxxxxxxxx> artist - title
    != …`` → ``data`` = {(song id, track id)}: the pairs the Taste Profile matched wrongly, to
    drop. The same pair on several lines is one pair (the real file repeats some); that is not
    a rejection. The text after the ids is not needed and not checked."""
    rejections: list[Rejection] = []
    counter = [0]
    pairs: set[tuple[str, str]] = set()
    for line_number, text, line in _cleaned_lines(lines, rejections, source, max_line_chars,
                                                  counter):
        match = _SID_MISMATCH.match(text)
        if match is None:
            rejections.append(_reject("unrecognised_line", "expected a line starting "
                                      "'ERROR: <SO… TR…>' (a song id and a track id)", line,
                                      source, line_number))
            continue
        pairs.add((match.group(1), match.group(2)))
    return ParsedFile(pairs, rejections, counter[0])


# --- compressed files: read to their end or not at all --------------------------------------
#
# Beam's decompressing reader stops without an error where a cut .gz ends, so a file truncated
# in transfer reads as a shorter file. Python's gzip/bz2/lzma readers raise EOFError at a missing
# end-of-stream marker and check each member's CRC; these helpers read with them and turn every
# failure of the compressed data into a ``CompressedFileError`` with a reason code.

# Beam's names for the compressions these helpers verify → Python's reader over a binary stream.
VERIFIED_COMPRESSIONS = {
    "gzip": lambda stream: gzip.GzipFile(fileobj=stream, mode="rb"),
    "bzip2": bz2.BZ2File,
    "lzma": lzma.LZMAFile,
}
# Beam reads these too, but Python has no reader that notices a cut in them (zstandard's
# stream reader stops silently, like Beam's): a listens file in them is refused, not guessed at.
UNVERIFIED_COMPRESSIONS = frozenset({"deflate", "zstd"})
_CHUNK_BYTES = 1 << 20
# A line longer than this is cut here (the rest of it is skipped, still one line): the parsers
# reject anything over ``4 * max_line_chars`` bytes anyway, and a compressed file of one endless
# line (a few KB of gzip can hold gigabytes of zeros) must not be held in memory whole.
MAX_LINE_BYTES = 1 << 24


class CompressedFileError(Exception):
    """A compressed file that cannot be read to its end. ``reason``: ``truncated_file`` (the
    stream stops before its end-of-stream marker, or the file is empty) or
    ``corrupt_compressed_file`` (not data of its compression, a bad CRC, garbage after it).
    ``lines`` and ``decompressed_bytes`` say how much could be read before the failure."""

    def __init__(self, path: str, reason: str, detail: str, lines: int = 0,
                 decompressed_bytes: int = 0):
        super().__init__(f"{path}: {detail}")
        self.path, self.reason, self.detail = path, reason, detail
        self.lines, self.decompressed_bytes = lines, decompressed_bytes

    @property
    def cause(self) -> str:
        """What is wrong with the file, without the dead letter's consequences (for an
        error message)."""
        return self.detail.split("; ", 1)[0]

    def rejection(self) -> Rejection:
        return Rejection(reason=self.reason, detail=self.detail, source=self.path)


class _CountingReader:
    """The raw (still compressed) stream: counts the bytes read and remembers whether a read
    itself failed, so that an I/O error is re-raised (and retried) instead of being taken for
    bad data."""

    def __init__(self, stream):
        self._stream = stream
        self.bytes_read = 0
        self.io_failed = False

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(size)
        except Exception:
            self.io_failed = True
            raise
        self.bytes_read += len(data)
        return data


def compression_of(path: str) -> str:
    """Beam's compression type for ``path`` from its name (``uncompressed``, ``gzip``, …)."""
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.detect_compression_type(path)


def _decompressed_chunks(path: str, compression: str) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` in chunks of at most 1 MiB, to the end of the last
    stream; raises ``CompressedFileError`` (with nothing counted yet: callers count) or the
    I/O error of the underlying read."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        raw = _CountingReader(stream)
        decompressed = VERIFIED_COMPRESSIONS[compression](raw)
        try:
            while True:
                chunk = decompressed.read1(_CHUNK_BYTES)
                if not chunk:
                    break
                yield chunk
        except (EOFError, OSError, lzma.LZMAError, zlib.error) as error:
            if raw.io_failed:
                raise
            size = f"after {raw.bytes_read:,} compressed bytes"
            if isinstance(error, EOFError):
                raise CompressedFileError(path, "truncated_file", f"the {compression} stream "
                                          f"ends before its end-of-stream marker {size}")
            raise CompressedFileError(path, "corrupt_compressed_file", f"not readable as "
                                      f"{compression} {size}: {error}")
        if raw.bytes_read == 0:
            raise CompressedFileError(path, "truncated_file", f"the file is empty (0 bytes): "
                                      f"not even the header of a {compression} stream")


def _with_counts(error: CompressedFileError, lines: int, size: int) -> CompressedFileError:
    error.lines, error.decompressed_bytes = lines, size
    error.detail += (f"; {lines:,} complete lines ({size:,} bytes) were readable before that. "
                     "The file is rejected whole: none of its lines are used (a partial file "
                     "would silently bias the users in it)")
    error.args = (f"{error.path}: {error.detail}",)
    return error


@dataclasses.dataclass
class VerifiedFile:
    """A compressed file read once to its end: its lines (the count ``split_lines`` gives),
    decompressed size, and the decompressed bytes when they fit the caller's buffer."""
    lines: int
    decompressed_bytes: int
    data: Optional[bytes]


def verify_compressed(path: str, compression: str, keep_bytes: int = 0) -> VerifiedFile:
    """Decompresses ``path`` to its end without keeping lines: raises ``CompressedFileError``
    (with the readable lines and bytes counted) if the file is cut or corrupt. Keeps the
    decompressed bytes if there are at most ``keep_bytes`` of them (memory stays bounded by
    ``keep_bytes`` + 1 MiB)."""
    lines, size, last = 0, 0, b"\n"
    kept: Optional[list[bytes]] = [] if keep_bytes > 0 else None
    try:
        for chunk in _decompressed_chunks(path, compression):
            lines += chunk.count(b"\n")
            size += len(chunk)
            last = chunk[-1:]
            if kept is not None:
                kept.append(chunk)
                if size > keep_bytes:
                    kept = None
    except CompressedFileError as error:
        raise _with_counts(error, lines, size)
    if last != b"\n":
        lines += 1  # a last line without a newline
    return VerifiedFile(lines, size, b"".join(kept) if kept is not None else None)


def _raw_lines(stream) -> Iterator[tuple[int, bytes]]:
    """(bytes consumed, line without its ``\n``/``\r\n``) for each line of ``stream``."""
    while True:
        line = stream.readline(MAX_LINE_BYTES)
        if not line:
            return
        if line[-1:] == b"\n":
            yield len(line), (line[:-2] if line[-2:-1] == b"\r" else line[:-1])
            continue
        consumed = len(line)
        if consumed == MAX_LINE_BYTES:
            rest = line
            while rest and rest[-1:] != b"\n":
                rest = stream.readline(MAX_LINE_BYTES)
                consumed += len(rest)
        yield consumed, line


def split_lines(stream) -> Iterator[bytes]:
    """The lines of a binary stream without their ``\\n`` or ``\\r\\n``, as Beam's text
    source splits them (a last line without a newline is a line; no empty line after a final
    newline). A line over ``MAX_LINE_BYTES`` is cut there (still one line)."""
    return (line for _, line in _raw_lines(stream))


def range_lines(stream, start: int, stop: int) -> Iterator[bytes]:
    """The lines of a seekable binary stream that start in the byte range [start, stop), split
    as ``split_lines`` does: ranges that tile a file give each of its lines exactly once (the
    rule of Beam's text source, which reads ~10x slower per line)."""
    if start > 0:
        stream.seek(start - 1)
        skipped = stream.readline(MAX_LINE_BYTES)  # the end of the line holding byte start-1
        position = start - 1 + len(skipped)
        while skipped and skipped[-1:] != b"\n":
            skipped = stream.readline(MAX_LINE_BYTES)
            position += len(skipped)
    else:
        stream.seek(0)
        position = 0
    for consumed, line in _raw_lines(stream):
        if position >= stop:
            return
        position += consumed
        yield line


def file_lines(path: str) -> Iterator[bytes]:
    """The lines of a local or gs:// file as bytes, with their line ends (compression
    detected from the name). A compressed file that turns out cut or corrupt raises
    ``CompressedFileError`` at its end, so a side file is never half-read silently."""
    from apache_beam.io.filesystems import FileSystems  # only the read_* helpers need Beam

    compression = compression_of(path)
    if compression in VERIFIED_COMPRESSIONS:
        lines, size, pending = 0, 0, b""
        try:
            for chunk in _decompressed_chunks(path, compression):
                size += len(chunk)
                pieces = (pending + chunk).split(b"\n")
                pending = pieces.pop()
                lines += len(pieces)
                yield from (piece + b"\n" for piece in pieces)
        except CompressedFileError as error:
            raise _with_counts(error, lines, size)
        if pending:
            yield pending
        return
    with FileSystems.open(path) as stream:
        # CompressedFile (.deflate, .zst) has readline but is not iterable.
        yield from iter(stream.readline, b"")


def read_listens(path: str, **options: Any) -> list[Union[Listen, Rejection]]:
    """All the Listens and Rejections of one listens file (see ``parse_listen_lines``); for
    local tools and tests: in a pipeline, read with Beam and call ``parse_listen_line``."""
    return list(parse_listen_lines(file_lines(path), source=path, **options))


def read_kaggle_users(path: str, **options: Any) -> ParsedFile[list[str]]:
    """``parse_kaggle_users`` on a local or gs:// file."""
    return parse_kaggle_users(file_lines(path), source=path, **options)


def read_kaggle_songs(path: str, **options: Any) -> ParsedFile[dict[str, int]]:
    """``parse_kaggle_songs`` on a local or gs:// file."""
    return parse_kaggle_songs(file_lines(path), source=path, **options)


def read_song_to_tracks(path: str, **options: Any) -> ParsedFile[dict[str, list[str]]]:
    """``parse_song_to_tracks`` on a local or gs:// file."""
    return parse_song_to_tracks(file_lines(path), source=path, **options)


def read_unique_tracks(path: str, **options: Any) -> ParsedFile[dict[str, Track]]:
    """``parse_unique_tracks`` on a local or gs:// file."""
    return parse_unique_tracks(file_lines(path), source=path, **options)


def read_sid_mismatches(path: str, **options: Any) -> ParsedFile[set[tuple[str, str]]]:
    """``parse_sid_mismatches`` on a local or gs:// file."""
    return parse_sid_mismatches(file_lines(path), source=path, **options)
