"""
Example daemons: L{echo.Echo} and the key-value L{store.Store}; and a
C{twisted.web} site, L{web.makeSite}, to run as a pool.
"""
