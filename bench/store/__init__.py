"""Where measurements are kept: each device folder's records (`records`, one `Record` a line) and its ceilings
(`peaks`). Tables, CSV and plots are always derived from them."""

from bench.store.peaks import DevicePeaks, read_peaks, write_peaks
from bench.store.record import FAILED_STATUSES, OK, SCHEMA, Record, RecordError
from bench.store.records import RECORDS_FILE, Key, RecordStore, iter_record_files, latest_ok, read_records

__all__ = [
    "FAILED_STATUSES",
    "OK",
    "RECORDS_FILE",
    "SCHEMA",
    "DevicePeaks",
    "Key",
    "Record",
    "RecordError",
    "RecordStore",
    "iter_record_files",
    "latest_ok",
    "read_peaks",
    "read_records",
    "write_peaks",
]
