"""title: Async words"""
import asyncio


class Pipe:
    async def pipe(self, body: dict, __user__: dict, __event_emitter__=None):
        if __event_emitter__:
            await __event_emitter__({"type": "status", "data": {"description": "thinking", "done": False}})

        async def words():
            for word in ("async", "pipes", "work"):
                await asyncio.sleep(0)
                yield word + " "
        return words()
