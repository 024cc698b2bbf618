"""The keyless read side: audit trails, exports and hash-chain verification.

Reads stored records through the store layer; imports no application layer.
"""
