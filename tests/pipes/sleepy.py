"""title: Sleepy"""
import time


class Pipe:
    def pipe(self, body: dict):
        time.sleep(3)
        return "too late"
