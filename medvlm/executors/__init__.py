"""Executors run the per-study stages and the model stage; the driver stays the single writer."""

from .base import EXECUTORS, BatchJob, Executor, ResultSink, get_executor

__all__ = ["EXECUTORS", "BatchJob", "Executor", "ResultSink", "get_executor"]
