"""BENCHMARKS.md: each renderer (benchmarks/run.py, benchmarks/gpu.py --render) replaces only its own
sections, byte for byte leaving the others (issue 34: run.py once dropped the GPU section). The
renderers are called on files in tmp_path; no benchmark runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import gpu, run, s3_requests, sections

REPO = Path(__file__).resolve().parents[1]
HEADER = "- Command: `make bench`\n- Machine: a CPU\n- Date: 2026-01-01 00:00; total 9 s"


def body(name: str, figure: str) -> str:
    """A section as run.py renders it: its heading, a table, its time."""
    title = run.SECTIONS[name][0]
    return f"## {title}\n\n| case | s |\n|---|---:|\n| one | {figure} |\n\n_(3 s; run 2026-01-01 00:00)_\n"


def gpu_results(tmp_path: Path, ms_per_step: float, date: str) -> Path:
    """A gpu_results.json as benchmarks/gpu.py writes it (one section, one row)."""
    path = tmp_path / f"gpu_results_{date[:10]}.json"
    rows = [{"network": "mlp 128x2, BatchNorm", "ok": True, "ms_per_step": ms_per_step}]
    results = {
        "machine": "a GPU machine, NVIDIA H200",
        "date": date,
        "seconds": 12.0,
        "sections": {"stack_probe": {"rows": rows, "seconds": 2.0}},
    }
    path.write_text(json.dumps(results))
    return path


def owned(text: str) -> dict[str, str]:
    """Every section of ``text`` (markers included), by key."""
    return {key: text[start:stop] for key, (start, stop) in sections.spans(text).items()}


@pytest.fixture
def benchmarks_md(tmp_path: Path) -> Path:
    """A BENCHMARKS.md with three run.py sections, the GPU section and one of an unknown renderer."""
    path = tmp_path / "BENCHMARKS.md"
    run.render(path, HEADER, {n: body(n, "1.0") for n in ("weight_matching", "scaling", "scale")})
    gpu.render([gpu_results(tmp_path, 5.13, "2026-12-04 13:09")], path)
    text = path.read_text() + "\n" + sections.marked("someone/else.py: notes", "## Notes\n\nkept as written\n") + "\n"
    path.write_text(text)
    return path


def test_the_sample_holds_every_renderers_sections_in_order(benchmarks_md: Path):
    text = benchmarks_md.read_text()
    assert text.startswith(sections.PREAMBLE)
    keys = [*run.ORDER[:1], run.key("weight_matching"), run.key("scaling"), run.key("scale")]
    assert list(owned(text)) == [*keys, gpu.KEY, "someone/else.py: notes"]
    assert "| mlp 128x2, BatchNorm | True | 5.13 |  |" in owned(text)[gpu.KEY]


def test_run_py_replaces_only_the_sections_it_ran(benchmarks_md: Path):
    before = benchmarks_md.read_text()
    old = owned(before)
    run.render(benchmarks_md, HEADER.replace("9 s", "4 s"), {"scaling": body("scaling", "2.0")})
    after = benchmarks_md.read_text()
    new = owned(after)
    # the whole file is the old one with exactly the header and the re-run section swapped
    header, scaling = run.key("header"), run.key("scaling")
    assert after == before.replace(old[header], new[header]).replace(old[scaling], new[scaling])
    assert "| one | 2.0 |" in new[scaling] and "total 4 s" in new[header]
    for key in (run.key("weight_matching"), run.key("scale"), gpu.KEY, "someone/else.py: notes"):
        assert new[key] == old[key]


def test_gpu_render_replaces_only_the_gpu_section(benchmarks_md: Path, tmp_path: Path):
    before = benchmarks_md.read_text()
    old = owned(before)
    gpu.render([gpu_results(tmp_path, 4.48, "2026-12-05 10:00")], benchmarks_md)
    after = benchmarks_md.read_text()
    new = owned(after)
    assert after == before.replace(old[gpu.KEY], new[gpu.KEY])
    assert "4.48" in new[gpu.KEY] and "5.13" not in new[gpu.KEY] and "2026-12-05 10:00" in new[gpu.KEY]
    assert after.count("## GPU (issue 22)") == 1


def test_a_renderer_adds_its_section_where_absent(benchmarks_md: Path, tmp_path: Path):
    before = benchmarks_md.read_text()
    run.render(benchmarks_md, HEADER, {"training": body("training", "7.0")})
    after = benchmarks_md.read_text()
    new = owned(after)
    # in run.py's order: after scaling, before scale; nothing else moved or changed
    keys = list(new)
    assert keys.index(run.key("scaling")) + 1 == keys.index(run.key("training")) == keys.index(run.key("scale")) - 1
    assert after.replace("\n\n" + new[run.key("training")], "", 1) == before
    # the GPU renderer on a file without its section: added at the end, the rest untouched
    without_gpu = tmp_path / "cpu_only.md"
    run.render(without_gpu, HEADER, {"scale": body("scale", "1.0")})
    cpu_only = without_gpu.read_text()
    gpu.render([gpu_results(tmp_path, 5.13, "2026-12-04 13:09")], without_gpu)
    rendered = without_gpu.read_text()
    assert rendered.startswith(cpu_only.rstrip("\n") + "\n\n" + sections.begin(gpu.KEY))
    assert list(owned(rendered))[-1] == gpu.KEY
    # run.py on a file holding only the GPU section: its header and sections go before it
    gpu_only = tmp_path / "gpu_only.md"
    gpu.render([gpu_results(tmp_path, 5.13, "2026-12-04 13:09")], gpu_only)
    gpu_section = owned(gpu_only.read_text())[gpu.KEY]
    run.render(gpu_only, HEADER, {"scale": body("scale", "1.0"), "weight_matching": body("weight_matching", "1")})
    text = gpu_only.read_text()
    assert list(owned(text)) == [run.key("header"), run.key("weight_matching"), run.key("scale"), gpu.KEY]
    assert owned(text)[gpu.KEY] == gpu_section


def test_a_broken_marker_is_refused_and_the_file_left_alone(benchmarks_md: Path):
    """Where a section's end is lost, a renderer refuses rather than guess where it ends."""
    text = benchmarks_md.read_text()
    for lost, error in [
        (sections.end(gpu.KEY), "'someone/else.py: notes' begins inside section 'benchmarks/gpu.py: gpu'"),
        (sections.end("someone/else.py: notes"), "<!-- begin someone/else.py: notes --> has no <!-- end"),
        (sections.begin(gpu.KEY), "<!-- end benchmarks/gpu.py: gpu --> has no matching"),
    ]:
        broken = text.replace(lost, "")
        benchmarks_md.write_text(broken)
        with pytest.raises(ValueError, match=re.escape(error)):
            run.render(benchmarks_md, HEADER, {"scaling": body("scaling", "2.0")})
        assert benchmarks_md.read_text() == broken
    twice = text + "\n" + sections.marked(gpu.KEY, "## GPU again\n") + "\n"
    with pytest.raises(ValueError, match="appears twice"):
        sections.spans(twice)
    with pytest.raises(ValueError, match="holds a marker"):
        sections.put(text, run.key("header"), owned(text)[run.key("header")])


def test_the_repositorys_benchmarks_md_is_all_in_renderers_sections(tmp_path: Path):
    """Every ``##`` section of BENCHMARKS.md lies between the markers of the renderer that writes it,
    the GPU section (issue 22's H200 runs) among them, where ``gpu.py --render`` replaces it."""
    text = (REPO / "BENCHMARKS.md").read_text()
    found = owned(text)
    assert set(found) <= {*run.ORDER, gpu.KEY, s3_requests.KEY}
    assert set(run.ORDER) <= set(found)
    outside = text
    for block in found.values():
        outside = outside.replace(block, "")
    assert not re.findall(r"^##", outside, flags=re.M), "a section outside every renderer's markers"
    restored = found[gpu.KEY]
    assert "## GPU (issue 22)" in restored and "NVIDIA H200" in restored
    assert "- Date: run 1: 2026-12-04 13:09; run 2: 2026-12-04 13:24; run 3: 2026-12-04 13:30" in restored
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text(text)
    gpu.render([gpu_results(tmp_path, 4.48, "2026-12-05 10:00")], copy)
    rendered = copy.read_text()
    assert rendered == text.replace(restored, owned(rendered)[gpu.KEY])
    assert rendered.count("## GPU (issue 22)") == 1
