"""`medvlm review` and `medvlm agreement`: readers' verdicts on a run's reports, and how they agree.

- `serve(run_dir, ...)` (server.py): the local review app (app.py behind guard.py) on 127.0.0.1;
- `import_reviews(run_dir, csv_path)` (importcsv.py): a reader study done in a spreadsheet;
- `agreement(run_dir)` (agreement.py): model vs reviewer and reviewer vs reviewer figures.
The ledger record and its checks live in medvlm/audit/reviews.py; runview.py reads a run for all three.
"""

from .agreement import agreement, agreement_lines, write_agreement
from .importcsv import ImportProblem, import_reviews
from .server import serve

__all__ = ["ImportProblem", "agreement", "agreement_lines", "import_reviews", "serve", "write_agreement"]
