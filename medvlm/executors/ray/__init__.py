"""`--executor ray`: the batch spread over a Ray cluster with Ray Data (Ray is imported only when used).

Decoding and report rendering run as Ray tasks, the model in a pool of actors (one loaded model
each), and every result streams back to the driver, which stays the single writer of the run
folder: study files, ledger, summary.csv, index.html and run.json. See driver.py for the pipeline
and how worker deaths are retried, worker.py for what runs on the workers.
"""

from .driver import INSTALL_HINT, RayExecutor

__all__ = ["INSTALL_HINT", "RayExecutor"]
