/** One Server-Sent Event. */
export interface SseEvent {
  event: string;
  data: string;
  id: string | null;
}

/**
 * A `text/event-stream` parser (the WHATWG rules the gateway's streams need): feed it
 * text as it arrives, get whole events back. Comment lines (the heartbeat) come back as
 * `null` so the caller can see the stream alive.
 */
export class SseParser {
  private buf = "";
  private data: string[] = [];
  private event = "";
  private id: string | null = null;

  feed(text: string): Array<SseEvent | null> {
    this.buf += text;
    const out: Array<SseEvent | null> = [];
    for (;;) {
      const nl = this.buf.search(/\r\n|\r|\n/);
      if (nl < 0) break;
      const eolLen = this.buf.startsWith("\r\n", nl) ? 2 : 1;
      // A lone `\r` at the end may be the first half of `\r\n`: wait for more.
      if (this.buf[nl] === "\r" && eolLen === 1 && nl === this.buf.length - 1) break;
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + eolLen);
      if (line === "") {
        if (this.data.length > 0) {
          out.push({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
        }
        this.data = [];
        this.event = "";
        this.id = null;
        continue;
      }
      if (line.startsWith(":")) {
        out.push(null);
        continue;
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id") this.id = value;
    }
    return out;
  }
}
