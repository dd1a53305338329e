"""Every bad-row kind lands in quarantine with its reason; nothing crashes, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prmforge.ingest import IngestResult, IngestSettings, ingest_dataset
from prmforge.registry import DatasetSpec

SETTINGS = IngestSettings(max_problem_chars=100, max_answer_chars=20, use_world_benchmark=False)


def _ingest(path: Path, **spec: object) -> IngestResult:
    result = ingest_dataset(DatasetSpec(key="t", source=str(path), **spec), SETTINGS)
    assert result.conserved, result.counts()
    return result


def _reasons(result: IngestResult) -> dict[int, str]:
    q = result.quarantine.to_pylist()
    return {r["source_row"]: r["reason"] for r in q}


def test_each_bad_jsonl_row_kind(tmp_path: Path) -> None:
    lines: list[bytes] = [
        json.dumps({"problem": "What is 1+1?", "answer": "2"}).encode(),          # 0 ok
        json.dumps({"answer": "3"}).encode(),                                      # 1 missing problem
        json.dumps({"problem": "  \n", "answer": "3"}).encode(),                   # 2 empty problem
        json.dumps({"problem": "P3", "answer": ""}).encode(),                      # 3 empty answer
        json.dumps({"problem": "P4", "answer": None}).encode(),                    # 4 null answer
        json.dumps({"problem": 42, "answer": "3"}).encode(),                       # 5 non-string problem
        json.dumps({"problem": "P6", "answer": [1, 2]}).encode(),                  # 6 non-string answer
        json.dumps({"problem": "P7", "answer": 7.50}).encode(),                    # 7 numeric answer: fine
        json.dumps({"problem": "P8", "answer": "\\frac{1}{2"}).encode(),           # 8 unparseable
        json.dumps({"problem": "x " * 100, "answer": "1"}).encode(),               # 9 too long problem
        b'{"problem": "caf\xe9 au lait?", "answer": "1"}',                         # 10 invalid UTF-8
        json.dumps({"problem": "Same?", "answer": "1"}).encode(),                  # 11 conflict
        json.dumps({"problem": "Same?  ", "answer": "2"}).encode(),                # 12 conflict
        json.dumps({"problem": "P13", "answer": "1", "split": "holdout"}).encode(),  # 13 bad split
        b"[1, 2, 3]",                                                              # 14 not an object
        b'{"problem": "P15", "answer": "\\ud800"}',                                # 15 lone surrogate
        json.dumps({"problem": "What is 1+1?", "answer": "2"}).encode(),          # 16 duplicate of 0
        json.dumps({"problem": "P17", "answer": "9" * 30}).encode(),               # 17 too long answer
        json.dumps({"problem": "P18", "answer": True}).encode(),                   # 18 bool answer
        json.dumps({"problem": "P19", "answer": "4", "split": "dev"}).encode(),   # 19 alias -> validation
        b"",                                                                        # blank line: no record
        b'{"problem": "P20", "ans',                                                 # 20 truncated last line
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines))
    r = _ingest(path, adapter="generic", columns={"split": "split"})
    assert _reasons(r) == {
        1: "missing_problem", 2: "missing_problem", 3: "missing_answer", 4: "missing_answer",
        5: "non_string", 6: "non_string", 8: "unparseable_answer", 9: "too_long", 10: "invalid_utf8",
        11: "conflicting_answers", 12: "conflicting_answers", 13: "invalid_split", 14: "malformed_record",
        15: "invalid_utf8", 17: "too_long", 18: "non_string", 20: "malformed_record",
    }
    accepted = {row["source_row"]: row for row in r.accepted.to_pylist()}
    assert sorted(accepted) == [0, 7, 19]
    assert accepted[7]["answer"] == "7.5"
    assert accepted[19]["split"] == "validation"
    assert r.dropped.to_pylist()[0]["source_row"] == 16 and r.dropped.to_pylist()[0]["kind"] == "duplicate"
    assert r.counts() == {"rows_read": 21, "accepted": 3, "quarantined": 17, "deduplicated": 1, "decontaminated": 0}
    assert r.reasons["missing_problem"] == 2 and r.reasons["conflicting_answers"] == 2
    # the raw record is kept (invalid bytes shown as U+FFFD) so a user can fix the source
    raw10 = next(q["raw"] for q in r.quarantine.to_pylist() if q["source_row"] == 10)
    assert "caf\ufffd au lait" in raw10
    raw20 = next(q for q in r.quarantine.to_pylist() if q["source_row"] == 20)
    assert raw20["raw"] == '{"problem": "P20", "ans' and "bad.jsonl#20" in raw20["detail"]


def test_raw_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"problem": "y" * 10_000, "answer": "1"}) + "\n")
    r = ingest_dataset(DatasetSpec(key="t", source=str(path)), IngestSettings(max_raw_chars=50))
    (q,) = r.quarantine.to_pylist()
    assert q["reason"] == "too_long" and len(q["raw"]) < 100 and "more chars" in q["raw"]


def test_csv_embedded_newlines_wrong_field_count_and_bad_bytes(tmp_path: Path) -> None:
    data = (
        b'problem,answer\r\n'
        b'"A farmer has 3 cows.\nEach gives 2 buckets.\r\nHow many buckets?",6\r\n'  # 0 embedded newlines
        b'"Costs, with a comma?","1,000"\r\n'                                       # 1 quoted comma
        b'only one field\r\n'                                                        # 2 wrong field count
        b'"caf\xe9?",3\r\n'                                                          # 3 invalid UTF-8
        b'x,y,z\r\n'                                                                 # 4 too many fields
        b'"Empty answer?",\r\n'                                                      # 5 missing answer
    )
    path = tmp_path / "p.csv"
    path.write_bytes(data)
    r = _ingest(path, adapter="generic")
    assert _reasons(r) == {2: "malformed_record", 3: "invalid_utf8", 4: "malformed_record", 5: "missing_answer"}
    rows = r.accepted.to_pylist()
    assert rows[0]["problem"] == "A farmer has 3 cows.\nEach gives 2 buckets.\nHow many buckets?"
    assert rows[0]["answer"] == "6"
    assert rows[1]["answer"] == "1000" and rows[1]["problem"] == "Costs, with a comma?"


def test_parquet_wrong_schema_non_string_and_corrupt(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"a": ["x", "y"], "b": [1, 2]}), folder / "1-wrong.parquet")
    pq.write_table(pa.table({"problem": [1, 2], "answer": ["1", "2"]}), folder / "2-ints.parquet")
    pq.write_table(pa.table({"problem": ["fine?"], "answer": [3.0]}), folder / "3-ok.parquet")
    (folder / "4-corrupt.parquet").write_bytes(b"PAR1 this is not really parquet")
    (folder / "5-empty.jsonl").write_bytes(b"")
    pq.write_table(pa.table({"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
                   folder / "6-norows.parquet")
    (folder / "7-notes.txt").write_text("what format am I?")
    (folder / ".hidden.jsonl").write_text("ignored")
    r = _ingest(folder, adapter="generic")
    q = r.quarantine.to_pylist()
    by_reason: dict[str, list[dict]] = {}
    for row in q:
        by_reason.setdefault(row["reason"], []).append(row)
    assert [row["source_row"] for row in by_reason["wrong_schema"]] == [0, 1]
    assert "needs" in by_reason["wrong_schema"][0]["detail"]
    assert [row["source_row"] for row in by_reason["non_string"]] == [2, 3]
    assert len(by_reason["malformed_file"]) == 2  # corrupt parquet, unknown format
    assert all(row["source_row"] == -1 for row in by_reason["malformed_file"])
    assert len(by_reason["empty_file"]) == 2
    (ok,) = r.accepted.to_pylist()
    assert ok["answer"] == "3" and ok["source_row"] == 4
    assert json.loads(ok["meta"])["source_file"] == "3-ok.parquet"
    assert r.rows_read == 2 + 2 + 1 + 4  # 5 data rows + 4 file-level records


def test_json_array_object_with_list_and_bad_json(tmp_path: Path) -> None:
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"problem": "A?", "answer": "1"}, "not an object"]))
    r = _ingest(arr)
    assert r.accepted.num_rows == 1 and _reasons(r) == {1: "malformed_record"}

    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"version": 2, "data": [{"problem": "B?", "answer": "2"}]}))
    assert _ingest(obj).accepted.column("answer").to_pylist() == ["2"]

    two = tmp_path / "two.json"
    two.write_text(json.dumps({"a": [{"problem": "C?", "answer": "3"}], "b": [{"problem": "D?", "answer": "4"}]}))
    assert _reasons(_ingest(two)) == {-1: "malformed_file"}
    assert _ingest(two, options={"json_field": "b"}).accepted.column("problem").to_pylist() == ["D?"]

    broken = tmp_path / "broken.json"
    broken.write_text('[{"problem": "E?", "answer": "5"}, {"problem": ')
    r = _ingest(broken)
    assert _reasons(r) == {-1: "malformed_file"} and r.rows_read == 1

    bad_bytes = tmp_path / "bytes.json"
    bad_bytes.write_bytes(b'[{"problem": "F\xff?", "answer": "6"}, {"problem": "G?", "answer": "7"}]')
    r = _ingest(bad_bytes)
    assert _reasons(r) == {0: "invalid_utf8"} and r.accepted.num_rows == 1


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    r = _ingest(path)
    assert r.counts()["rows_read"] == 1 and _reasons(r) == {-1: "empty_file"}
    assert r.accepted.num_rows == 0


def test_utf8_bom_and_crlf_lines(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"problem": "A?", "answer": "1"}).encode() + b"\r\n"
                     + json.dumps({"problem": "B?", "answer": "2"}).encode() + b"\r\n")
    r = _ingest(path)
    assert r.accepted.column("problem").to_pylist() == ["A?", "B?"] and r.quarantined_count == 0
