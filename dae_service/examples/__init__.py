"""
Example daemons: L{echo.Echo} and the key-value L{store.Store}.
"""
