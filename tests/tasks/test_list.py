import ssmlab
from ssmlab import registry
from ssmlab.cli import main


def test_every_task_reports_its_listing_metadata():
    for entry in registry.entries("task"):
        for key in ("source", "size", "seq_len", "metric"):
            assert entry.extra.get(key), f"task {entry.name} has no {key!r} in its registration"
        assert entry.paper and entry.description


def test_list_tasks_prints_columns(capsys):
    assert main(["list", "tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"tasks ({len(ssmlab.list_tasks())}):"
    header = lines[1].split()
    assert header[:3] == ["name", "source", "size"] and "metric" in header and "len" in header
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(ssmlab.list_tasks())
    listops = rows["listops"].split()
    assert listops[1:5] == ["generated", "96k/2k/2k", "500-2000", "accuracy"] and "2011.04006" in rows["listops"]
    assert rows["path-x"].split()[1:5] == ["generated", "160k/20k/20k", "16384", "accuracy"]
    assert rows["mqar"].split()[1] == "generated" and "2312.04927" in rows["mqar"]
    # Columns line up: each column starts at the same offset on every line.
    offset = lines[1].index("source")
    assert all(line[offset - 2:offset] == "  " and line[offset] != " " for line in lines[2:])
    assert rows["lra-image"].split()[1] == "debian:dataset-fashion-mnist" and "2011.04006" in rows["lra-image"]
