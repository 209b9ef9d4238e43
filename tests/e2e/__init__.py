"""The end-to-end harnesses, one module each:

* ``inprocess.py`` — the real Application, GenerationService and storage in the test's event
  loop, against FakeTelegram and FakeComfyDeploy (most handler tests);
* ``process.py`` — ``python -m bot`` as a subprocess against the same fakes on 127.0.0.1, to
  SIGKILL/SIGTERM it (crash recovery, graceful shutdown);
* ``local.py`` — local mode (the Bot API emulator and the web chat) with the preview backend.
"""
