"""The on-device service (`edgeagent agent`): every phase in one supervised process.

It sits above tpm, measure, attest, drivers and controllers and below the CLI; nothing below imports it.
See ``supervisor`` for the start order, the threads, and what a reload and a stop do.
"""
