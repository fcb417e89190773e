"""Later versions of the shop's customers contract, for the tests: ``CustomersV2`` (v1
plus a loyalty tier, for the reader policies) and the chain ``Customers3``."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from contracts import Chain, MigrationError
from contracts.shop import CustomersV1


class CustomersV2(CustomersV1):
    """A shop customer with the loyalty tier the source added."""

    __version__ = 2

    loyalty: Series[str] = pa.Field(nullable=True, isin=["silver", "gold"])


# --- a chain of three versions of the shop's customers (tests/test_contract_chain.py) ---
#
# v1 -> v2: `name` renamed to `full_name`; `name` is kept for v1 readers and deprecated,
#           to go away in v3; `updated_at` widened to a timestamp in UTC. Nothing is
#           lost going back.
# v2 -> v3: a new required column `tier` with a default; `email` split into `email_user`
#           and `email_domain`; `name` removed. Going back loses nothing unless a row has
#           a tier other than the default.


_UTC = {"unit": "us", "tz": "UTC"}


class CustomersR2(CustomersV1):
    """v1 with `full_name` (`name` kept until v3), and `updated_at` widened from a naive
    timestamp to one in UTC."""

    __version__ = 2
    __deprecated__ = {"name": 3}

    full_name: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 200})
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs=_UTC)

    @staticmethod
    def upgrade(frame):  # noqa: ANN001, ANN205
        frame["full_name"] = frame["name"]
        frame["updated_at"] = pd.to_datetime(frame["updated_at"]).dt.tz_localize("UTC")
        return frame

    @staticmethod
    def downgrade(frame):  # noqa: ANN001, ANN205
        frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True).dt.tz_convert(None)
        return frame.drop(columns=["full_name"])


class CustomersR3(pa.DataFrameModel):
    """A shop customer, version 3."""

    __version__ = 3

    id: Series[int] = pa.Field(ge=1, unique=True)
    full_name: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 200})
    email_user: Series[str] = pa.Field(str_length={"min_value": 1})
    email_domain: Series[str] = pa.Field(str_matches=r"^[^@\s]+\.[a-z]{2,}$")
    country: Series[str] = pa.Field(str_length={"min_value": 2, "max_value": 2})
    tier: Series[str] = pa.Field(isin=["standard", "gold"])
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs=_UTC)
    deleted_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True

    @staticmethod
    def upgrade(frame):  # noqa: ANN001, ANN205
        parts = frame["email"].astype("object").str.partition("@")
        frame["email_user"] = parts[0]
        frame["email_domain"] = parts[2]
        frame["tier"] = "standard"
        return frame.drop(columns=["email", "name"])

    @staticmethod
    def downgrade(frame):  # noqa: ANN001, ANN205
        special = frame["tier"].notna() & (frame["tier"] != "standard")
        if special.any():
            raise MigrationError(
                f"{int(special.sum())} row(s) have a tier other than 'standard', which v2 cannot hold"
            )
        frame["email"] = frame["email_user"] + "@" + frame["email_domain"]
        frame["name"] = frame["full_name"]
        return frame.drop(columns=["email_user", "email_domain", "tier"])


Customers3 = Chain(CustomersV1, CustomersR2, CustomersR3)


class CustomersR3Stale(CustomersR3):
    """A v3 that forgot to drop the deprecated `name` (for `contracts lint`)."""

    name: Series[str]


StaleChain = Chain(CustomersV1, CustomersR2, CustomersR3Stale)


# --- types that a pandas round trip would bend (tests/test_contract_chain.py) ---


class LedgerV1(pa.DataFrameModel):
    __version__ = 1
    id: Series[int]
    amount: Series[object] = pa.Field(nullable=True)
    ref: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    booked: Series[object] = pa.Field(nullable=True)


class LedgerV2(LedgerV1):
    __version__ = 2
    note: Series[str]

    @staticmethod
    def upgrade(frame):  # noqa: ANN001, ANN205
        frame["note"] = ""
        return frame

    @staticmethod
    def downgrade(frame):  # noqa: ANN001, ANN205
        return frame.drop(columns=["note"])


class ForgetfulV3(CustomersR2):
    """A v3 that forgot its own upgrade: it must not run v2's again."""

    __version__ = 3


# --- readers meeting versions they cannot fully hold (tests/test_readers.py) ---


class CustomersL2(CustomersV1):
    """v1 plus a loyalty tier; going back refuses rows that have one (v1 cannot hold it)."""

    __version__ = 2

    loyalty: Series[str] = pa.Field(nullable=True, isin=["silver", "gold"])

    @staticmethod
    def upgrade(frame):  # noqa: ANN001, ANN205
        frame["loyalty"] = None
        return frame

    @staticmethod
    def downgrade(frame):  # noqa: ANN001, ANN205
        held = frame["loyalty"].notna()
        if held.any():
            raise MigrationError(f"{int(held.sum())} row(s) have a loyalty tier v1 cannot hold")
        return frame.drop(columns=["loyalty"])


Loyalty = Chain(CustomersV1, CustomersL2)


class CustomersN2(pa.DataFrameModel):
    """v2: `name` renamed to `full_name`, and no way back (a v1 reader lacks `name`)."""

    __version__ = 2

    id: Series[int] = pa.Field(ge=1, unique=True)
    full_name: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 200})
    email: Series[str] = pa.Field(str_matches=r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
    country: Series[str] = pa.Field(str_length={"min_value": 2, "max_value": 2})
    updated_at: Series[pd.Timestamp]
    deleted_at: Series[pd.Timestamp] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True

    @staticmethod
    def upgrade(frame):  # noqa: ANN001, ANN205
        return frame.rename(columns={"name": "full_name"})


class CustomersN2Back(CustomersN2):
    """The same v2 (same fingerprint) with the downgrade that gives `name` back."""

    @staticmethod
    def upgrade(frame):  # noqa: ANN001, ANN205
        return frame.rename(columns={"name": "full_name"})

    @staticmethod
    def downgrade(frame):  # noqa: ANN001, ANN205
        return frame.rename(columns={"full_name": "name"})


Renamed = Chain(CustomersV1, CustomersN2)
RenamedBack = Chain(CustomersV1, CustomersN2Back)


class People(pa.DataFrameModel):
    """A name the contract requires and a nickname it does not (several producers)."""

    id: Series[int]
    name: Series[str]
    nickname: Series[str] = pa.Field(nullable=True)


# --- a reader's own migration that breaks its own contract (tests/test_readers.py) ---


class CustomersT2(CustomersV1):
    """v1 plus a required tier; the upgrade (a bug) gives customers of country 'XX' a tier
    v2 refuses."""

    __version__ = 2

    tier: Series[str] = pa.Field(isin=["standard", "gold"])

    @staticmethod
    def upgrade(frame):  # noqa: ANN001, ANN205
        frame["tier"] = frame["country"].map(lambda c: "unknown" if c == "XX" else "standard")
        return frame


class CustomersT2Fixed(CustomersT2):
    """The same v2 (same fingerprint), its upgrade fixed."""

    @staticmethod
    def upgrade(frame):  # noqa: ANN001, ANN205
        frame["tier"] = "standard"
        return frame


BadTier = Chain(CustomersV1, CustomersT2)
FixedTier = Chain(CustomersV1, CustomersT2Fixed)


# --- a v2 column a producer's downgrade needs, null in every record so far ---


class TierV1(pa.DataFrameModel):
    id: Series[int]
    name: Series[str] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True


class TierV2(TierV1):
    __version__ = 2
    tier: Series[str] = pa.Field(nullable=True)

    @staticmethod
    def upgrade(frame: pd.DataFrame) -> pd.DataFrame:
        frame["tier"] = None
        return frame

    @staticmethod
    def downgrade(frame: pd.DataFrame) -> pd.DataFrame:
        if frame["tier"].notna().any():
            raise MigrationError("tier has no v1 column")
        return frame.drop(columns=["tier"])
