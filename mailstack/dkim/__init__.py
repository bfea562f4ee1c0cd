"""DKIM: key files (:mod:`.keys`) and signing of outgoing mail (:mod:`.signer`)."""

from mailstack.dkim.keys import DKIMKey, DKIMKeyError, KeyDirectory, KeyStore
from mailstack.dkim.signer import DKIMSigner, PooledSigner, from_domain

__all__ = ["DKIMKey", "DKIMKeyError", "DKIMSigner", "KeyDirectory", "KeyStore", "PooledSigner", "from_domain"]
