//! A minimal blocking RESP2 client: enough to probe and steer test servers without a runtime.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{Result, TestkitError};

/// One RESP2 reply, as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A simple string (`+OK`).
    Status(String),
    /// An error reply (`-ERR ...`), without the leading `-`.
    Error(String),
    /// An integer (`:1`).
    Int(i64),
    /// A bulk string; `None` is the nil bulk (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// An array; `None` is the nil array (`*-1`).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status reply or of a UTF-8 bulk string; `None` for anything else
    /// (including error replies, nil and non-UTF-8 bulk strings).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Status(s) => Some(s),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value of an integer reply; `None` for anything else.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The bytes of a non-nil bulk string; `None` for anything else.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    /// The elements of a non-nil array; `None` for anything else.
    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    /// The message of an error reply (without the leading `-`); `None` for anything else.
    pub fn as_error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }

    /// True for an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// True for the nil bulk string and the nil array.
    pub fn is_nil(&self) -> bool {
        matches!(self, Reply::Bulk(None) | Reply::Array(None))
    }
}

/// Encodes a command as a RESP2 array of bulk strings.
pub(crate) fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Why reading a reply failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Protocol(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn read_line<R: BufRead>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the server",
        )));
    }
    if !line.ends_with(b"\r\n") {
        return Err(ReadError::Protocol("line not terminated by CRLF".into()));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(bytes: &[u8]) -> Result<i64, ReadError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ReadError::Protocol(format!(
                "expected an integer, got {:?}",
                String::from_utf8_lossy(bytes)
            ))
        })
}

/// Reads one complete reply.
pub(crate) fn read_reply<R: BufRead>(r: &mut R) -> Result<Reply, ReadError> {
    let line = read_line(r)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(ReadError::Protocol("empty line".into()));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Reply::Status(text())),
        b'-' => Ok(Reply::Error(text())),
        b':' => Ok(Reply::Int(parse_int(rest)?)),
        b'$' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = usize::try_from(len)
                .map_err(|_| ReadError::Protocol(format!("bulk length {len} too large")))?;
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)?;
            if !buf.ends_with(b"\r\n") {
                return Err(ReadError::Protocol(
                    "bulk string not terminated by CRLF".into(),
                ));
            }
            buf.truncate(len);
            Ok(Reply::Bulk(Some(buf)))
        }
        b'*' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Reply::Array(None));
            }
            let mut items = Vec::new();
            for _ in 0..len {
                items.push(read_reply(r)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(ReadError::Protocol(format!(
            "unknown reply type byte {:?}",
            char::from(other)
        ))),
    }
}

/// A plain or TLS byte stream.
pub(crate) trait Stream: io::Read + io::Write + Send {}
impl<T: io::Read + io::Write + Send> Stream for T {}

/// A blocking connection to one loopback server, with socket timeouts on every operation.
pub(crate) struct Connection {
    addr: String,
    stream: BufReader<Box<dyn Stream>>,
}

impl Connection {
    /// Connects to `127.0.0.1:port` (over TLS with `tls`'s client certificate when given);
    /// `timeout` bounds the connect and every later read and write.
    pub(crate) fn open(
        port: u16,
        timeout: Duration,
        tls: Option<&crate::tls::TlsCerts>,
    ) -> Result<Connection> {
        let addr = format!("127.0.0.1:{port}");
        let fail = |source| TestkitError::Command {
            addr: addr.clone(),
            command: "connect".into(),
            source,
        };
        let socket = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&socket, timeout).map_err(fail)?;
        stream.set_read_timeout(Some(timeout)).map_err(fail)?;
        stream.set_write_timeout(Some(timeout)).map_err(fail)?;
        // Commands are tiny and we always wait for the answer: do not let Nagle delay them.
        stream.set_nodelay(true).map_err(fail)?;
        let stream: Box<dyn Stream> = match tls {
            Some(certs) => Box::new(crate::tls::wrap(certs, stream).map_err(fail)?),
            None => Box::new(stream),
        };
        Ok(Connection {
            addr,
            stream: BufReader::new(stream),
        })
    }

    /// Authenticates with `AUTH password`; an error reply becomes [`TestkitError::Server`].
    pub(crate) fn auth(&mut self, password: &str) -> Result<()> {
        match self.call(&["AUTH", password])? {
            Reply::Error(message) => Err(TestkitError::Server {
                addr: self.addr.clone(),
                command: "AUTH".into(),
                message,
            }),
            _ => Ok(()),
        }
    }

    /// Sends one command and reads its reply; error replies are returned as [`Reply::Error`].
    pub(crate) fn call(&mut self, args: &[&str]) -> Result<Reply> {
        let command = args.first().copied().unwrap_or_default().to_owned();
        let addr = &self.addr;
        let transport = |source| TestkitError::Command {
            addr: addr.clone(),
            command: command.clone(),
            source,
        };
        let stream = self.stream.get_mut();
        stream.write_all(&encode(args)).map_err(transport)?;
        stream.flush().map_err(transport)?;
        read_reply(&mut self.stream).map_err(|e| match e {
            ReadError::Io(source) => transport(source),
            ReadError::Protocol(detail) => TestkitError::Protocol {
                addr: addr.clone(),
                detail,
            },
        })
    }

    /// Like [`Connection::call`], but an error reply becomes [`TestkitError::Server`].
    pub(crate) fn call_ok(&mut self, args: &[&str]) -> Result<Reply> {
        match self.call(args)? {
            Reply::Error(message) => Err(TestkitError::Server {
                addr: self.addr.clone(),
                command: args.join(" "),
                message,
            }),
            reply => Ok(reply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Reply {
        read_reply(&mut &bytes[..]).unwrap()
    }

    #[test]
    fn every_reply_type_round_trips_through_the_parser() {
        assert_eq!(parse(b"+OK\r\n"), Reply::Status("OK".into()));
        assert_eq!(parse(b"-ERR no\r\n"), Reply::Error("ERR no".into()));
        assert_eq!(parse(b":-42\r\n"), Reply::Int(-42));
        assert_eq!(parse(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(
            parse(b"$4\r\na\r\nb\r\n"),
            Reply::Bulk(Some(b"a\r\nb".to_vec()))
        );
        assert_eq!(parse(b"*-1\r\n"), Reply::Array(None));
        assert_eq!(
            parse(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n"),
            Reply::Array(Some(vec![
                Reply::Int(1),
                Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec()))]))
            ]))
        );
    }

    #[test]
    fn malformed_input_is_a_protocol_error_not_a_panic() {
        for bad in [&b"?x\r\n"[..], b":abc\r\n", b"+OK\n", b"$3\r\nabcd\r\n"] {
            assert!(matches!(
                read_reply(&mut &bad[..]),
                Err(ReadError::Protocol(_))
            ));
        }
        assert!(matches!(read_reply(&mut &b""[..]), Err(ReadError::Io(_))));
    }

    #[test]
    fn commands_are_encoded_as_bulk_string_arrays() {
        assert_eq!(
            encode(&["SET", "k", ""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
    }
}
