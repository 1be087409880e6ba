"""title: Async words"""
import asyncio


class Pipe:
    async def pipe(self, body: dict, __user__: dict, __event_emitter__=None):
        if __event_emitter__:
            await __event_emitter__({"type": "status", "data": {"description": "thinking", "done": False}})
        # Like a client session opened while pipe() is awaited: the generator must run on that same loop.
        words = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, words.set_result, ["async", "pipes", "work"])

        async def stream():
            for word in await words:
                yield word + " "
        return stream()
