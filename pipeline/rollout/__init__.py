"""The agent loop (loop), token-exact chat rendering (chat) and tool-call parsing (toolcalls)."""

