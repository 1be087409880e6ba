"""title: Failing"""
class Pipe:
    def pipe(self, body: dict):
        raise RuntimeError("the quota of the remote service is exhausted")
