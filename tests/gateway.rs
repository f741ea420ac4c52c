//! One integration binary: every test talks to a real server over 127.0.0.1.
