//! An HTTP receiver on loopback for notification tests.

/// How a [`Receiver`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200.
    Ok,
    /// 500.
    Fail,
    /// Reads the request and never answers (holds the connection).
    Hang,
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The status it answered (0 when it hung).
    pub status: u16,
    /// Request path.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Body.
    pub body: String,
}

#[derive(Debug)]
struct ReceiverState {
    answer: Answer,
    fail_first: usize,
    got: Vec<Received>,
}

/// A webhook receiver on 127.0.0.1 (a thread per connection): answers as
/// told, after failing the first `fail_first` requests, and keeps what it got.
#[derive(Debug, Clone)]
pub struct Receiver {
    port: u16,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
}

impl Receiver {
    /// Starts one.
    pub fn start(answer: Answer, fail_first: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("address").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ReceiverState {
            answer,
            fail_first,
            got: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || Self::serve(conn, &state));
            }
        });
        Receiver { port, state }
    }

    fn serve(mut conn: std::net::TcpStream, state: &std::sync::Mutex<ReceiverState>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = std::collections::BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        let _ = reader.read_exact(&mut body);
        let answer = {
            let mut s = state.lock().expect("receiver state");
            let answer = if s.fail_first > 0 {
                s.fail_first -= 1;
                Answer::Fail
            } else {
                s.answer
            };
            s.got.push(Received {
                status: match answer {
                    Answer::Ok => 200,
                    Answer::Fail => 500,
                    Answer::Hang => 0,
                },
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            answer
        };
        let status = match answer {
            Answer::Ok => "200 OK",
            Answer::Fail => "500 Internal Server Error",
            Answer::Hang => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                return;
            }
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers from now on.
    pub fn set_answer(&self, answer: Answer) {
        self.state.lock().expect("receiver state").answer = answer;
    }

    /// Everything it got so far.
    pub fn got(&self) -> Vec<Received> {
        self.state.lock().expect("receiver state").got.clone()
    }

    /// Waits up to `within` until `done(got)` holds; panics with what it got otherwise.
    pub fn wait_for(
        &self,
        within: std::time::Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "receiver on port {}: {what} did not happen within {within:?}; got {got:#?}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
