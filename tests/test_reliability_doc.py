"""docs/reliability.md's corpus table is generated from the corpus tests: it must match them."""
import subprocess
import sys

from conftest import REPO


def test_corpus_table_is_up_to_date():
    proc = subprocess.run([sys.executable, "docs/make_reliability_table.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
