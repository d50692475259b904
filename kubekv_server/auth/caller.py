"""Who makes the current client call: the caller's AuthInfo, as the auth gate resolved it.

The RPC layer binds it while a call's handler runs, on whatever thread runs it, so that
code far from the RPC (a proposal to the log, `member/proposals.py`) can record it
without threading it through every signature. None outside a call, or with auth off.
"""

from __future__ import annotations

import contextvars

call_principal: contextvars.ContextVar = contextvars.ContextVar("call_principal", default=None)
