"""A second version of the shop's customers contract, for the reader-policy tests
(``tests.contracts_versions:CustomersV2``): version 1 plus a loyalty tier."""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from contracts.shop import CustomersV1


class CustomersV2(CustomersV1):
    """A shop customer with the loyalty tier the source added."""

    __version__ = 2

    loyalty: Series[str] = pa.Field(nullable=True, isin=["silver", "gold"])
