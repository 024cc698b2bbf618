"""The eventsourcing adapter: the private application, sealing, the hash chain
and its heads, the stored-record codec, projections and read models.

Imports the domain, :mod:`klarna_flow._shared` and :mod:`klarna_flow._errors`;
never the application layer, the HTTP adapter or the command line.
"""
