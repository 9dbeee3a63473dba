"""The Colab notebook, executed top to bottom with nbclient in its offline smoke setting; a failing cell fails."""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from transformers import AutoModelForSequenceClassification

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "qlora_bt_colab.ipynb"


def test_notebook_is_generated_from_its_script():
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        from make_notebook import build
    finally:
        sys.path.remove(str(NOTEBOOKS))
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [cell.source for cell in stored.cells] == [cell.source for cell in build().cells]
    assert [cell for cell in stored.cells if "parameters" in cell.metadata.get("tags", [])]


def test_notebook_runs_in_the_smoke_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("BT_PEFT_NOTEBOOK_SETTING", "smoke")  # read by the parameters cell (the kernel inherits it)
    monkeypatch.setenv("BT_PEFT_NOTEBOOK_OUTPUT", str(tmp_path / "out"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell when any cell fails

    outputs = {cell.source.splitlines()[0]: cell.outputs for cell in notebook.cells if cell.cell_type == "code"}
    plots = next(out for first, out in outputs.items() if first.startswith("from IPython.display"))
    assert sum("image/png" in output.get("data", {}) for output in plots) == 3
    merged = tmp_path / "out" / "merged"
    assert AutoModelForSequenceClassification.from_pretrained(merged).config.num_labels == 2
    card = (merged / "README.md").read_text()
    assert "after training: accuracy" in card and "`logits[:, 1]`" in card
    text = "\n".join(output.get("text", "") for cells in outputs.values() for output in cells)
    assert "before: accuracy" in text and "after: accuracy" in text and "chosen: " in text
    assert "set HUB_REPO_ID to push it" in text and "trainable parameters of" in text
    assert (tmp_path / "out" / "eval" / "margins.png").is_file()
