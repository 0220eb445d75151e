"""traitlens.store: Zarr layer arrays + Parquet tables, the commit protocol, verify/repair."""

from .errors import InputError, TraitlensError
from .layout import GroupKey, StoreError, file_stem, safe_name
from .lock import StoreLocked
from .store import CommitWriter, PendingBatch, Store
from .verify import Report, verify

__all__ = ["GroupKey", "Store", "StoreError", "StoreLocked", "CommitWriter", "PendingBatch", "Report", "verify",
           "safe_name", "file_stem", "TraitlensError", "InputError"]
