"""Decoding speed on the main thread against a second thread, as `reviewgan serve` decodes (Batcher).

    python scripts/thread_probe.py [MODEL_DIR]

Each case runs in a fresh process: 16 requests of 5 reviews, decoded as one batch of 80, twice.
  main          the model loaded and decoding on the main thread
  thread        loaded on the main thread with the machine's threads, decoding on a second thread
  serve         loaded with one thread (serve.load_for_serving_threads), decoding on a second thread
                given the machine's threads: what `reviewgan serve` does
Prefix OMP_WAIT_POLICY=PASSIVE to see OpenMP without spinning.
"""

import subprocess
import sys
import threading
import time


def decode_80(model, threads=None) -> list[float]:
    import torch
    if threads:
        torch.set_num_threads(threads)
    model.generate("positive", n=2, seed=0)  # warm-up
    times = []
    for rep in range(2):
        reqs = [model.request(("positive", "negative")[i % 2], n=5, seed=i + 100 * rep) for i in range(16)]
        t = time.perf_counter()
        model.generate_batch(reqs)
        times.append(time.perf_counter() - t)
    return times


def case(name: str, model_dir) -> None:
    from reviewgan import ReviewGAN
    from reviewgan.serve import load_for_serving_threads
    threads = load_for_serving_threads() if name == "serve" else None
    model = ReviewGAN.from_pretrained(model_dir)
    if name == "main":
        times = decode_80(model)
    else:
        box = []
        worker = threading.Thread(target=lambda: box.append(decode_80(model, threads)))
        worker.start()
        worker.join()
        times = box[0]
    print(f"{name:7s} 80 reviews in one batch: " + ", ".join(f"{t:.2f} s" for t in times), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        case(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None)
    else:
        model_dir = sys.argv[1] if len(sys.argv) > 1 else ""
        for name in ("main", "thread", "serve"):
            subprocess.run([sys.executable, __file__, "--case", name, model_dir], check=True)
