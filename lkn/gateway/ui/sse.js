// Server-sent events framing, for streams read with fetch(): EventSource cannot send the
// Authorization header that lkn's admin keys need.

export class SseParser {
  constructor() {
    this.buffer = "";
  }

  // Feed a chunk of text; returns the data of every event it completed (comments, such as
  // lkn's keep-alives, carry no data and are skipped).
  feed(chunk) {
    this.buffer += chunk.replace(/\r\n?/g, "\n");
    const out = [];
    let end;
    while ((end = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = block.split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""));
      if (data.length) out.push(data.join("\n"));
    }
    return out;
  }
}
