"""Page sizes of the shop's list calls: capped, so no caller can ask for unbounded work."""

from __future__ import annotations

from typing import Annotated

import msgspec

#: The most items one list call returns.
MAX_PAGE = 100

#: How many items a list call returns: 1 to MAX_PAGE (a larger one is a 422 naming the field).
PageSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]

#: Where a page starts: after this key (the last one of the previous page); "" for the first.
After = Annotated[str, msgspec.Meta(max_length=64)]
