"""Sieve (RFC 5228): the script language that files mail at local delivery.

:mod:`.parser` turns a script into commands and tests, with the line and column of
any error (ManageSieve's PUTSCRIPT and CHECKSCRIPT report them).
"""
