"""Prompt/response tables for supervised fine-tuning: JSONL or Parquet files, local or at a storage URI,
read with pyarrow. Every problem is a DataError naming the file, the column or the row, and the fix."""

from __future__ import annotations

from pathlib import PurePosixPath

from rayrl.errors import DataError

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def read_table(path: str):
    """A JSONL or Parquet file (by its name: .jsonl/.json, .parquet/.pq), local or at a storage URI, as a
    pyarrow Table; DataError naming the file when it is missing or does not parse."""
    import pyarrow.fs as pafs

    from rayrl.storage.location import is_uri

    suffix = PurePosixPath(path.split("?", 1)[0]).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown data format '{suffix or '(no extension)'}'; name the file .jsonl or .parquet")
    try:
        fs, inner = pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), path)
        if fs.get_file_info(inner).type == pafs.FileType.NotFound:
            raise DataError(f"{path}: file not found")
        table = _read(fs, inner, FORMATS[suffix])
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow's parse errors carry the line; pass them on with the file
        raise DataError(f"{path}: cannot read it as {FORMATS[suffix].upper()}: {e}") from None
    return table


def read_pairs(path: str, prompt_key: str, response_key: str) -> list[tuple[str, str]]:
    """The (prompt, response) rows of one file (:func:`read_table`), checked: both columns, text in every row."""
    table = read_table(path)
    missing = [k for k in (prompt_key, response_key) if k not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: no column '{missing[0]}' (columns: {', '.join(table.column_names) or 'none'}); name the "
            f"columns with sft.prompt_key and sft.response_key"
        )
    prompts, responses = table.column(prompt_key).to_pylist(), table.column(response_key).to_pylist()
    for row, (p, r) in enumerate(zip(prompts, responses), start=1):
        for key, value in ((prompt_key, p), (response_key, r)):
            if not isinstance(value, str):
                raise DataError(
                    f"{path}, row {row}: column '{key}' holds {type(value).__name__} {str(value)[:60]!r}, not text"
                )
    if not prompts:
        raise DataError(f"{path}: no rows")
    return list(zip(prompts, responses))


def _read(fs, path: str, fmt: str):
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, filesystem=fs)
    import pyarrow.json as pj

    with fs.open_input_stream(path) as stream:
        return pj.read_json(stream)
