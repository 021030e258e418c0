/**
 * Runs async tasks one after another per key, different keys side by side.
 * The hub's state calls are async, so two route applications of one cog (a
 * reconnect racing the old tunnel's last update, a drop racing an announce)
 * would otherwise interleave at every await and leave a mixture of both.
 */
export class KeyedQueue {
  /** The last task of each key, settled or not; it never rejects (its errors belong to its caller). */
  private readonly tails = new Map<string, Promise<void>>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const out = prev.then(task);
    const tail = out.then(() => {}, () => {});
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return out;
  }

  /** Keys with a task queued or running. */
  get busy(): number {
    return this.tails.size;
  }
}
