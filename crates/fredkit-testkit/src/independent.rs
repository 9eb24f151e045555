//! N unrelated standalone servers, as Redlock needs.

use crate::error::{Result, TestkitError};
use crate::server::{start_many, RedisServer, ServerOptions};

/// `n` standalone servers that know nothing of each other (no replication, no cluster), for
/// algorithms that need independent failure domains such as Redlock. All are killed when the
/// value is dropped.
#[derive(Debug)]
pub struct IndependentServers {
    servers: Vec<RedisServer>,
}

impl IndependentServers {
    /// Starts `n` servers concurrently, each as [`RedisServer::start`] would.
    ///
    /// # Errors
    /// [`TestkitError::InvalidOptions`] for `n == 0`; otherwise the first start error (the
    /// servers already started are killed).
    pub fn start(n: usize) -> Result<Self> {
        Self::start_with(n, ServerOptions::default())
    }

    /// Starts `n` servers concurrently, all with `opts`.
    ///
    /// # Errors
    /// As [`IndependentServers::start`].
    pub fn start_with(n: usize, opts: ServerOptions) -> Result<Self> {
        if n == 0 {
            return Err(TestkitError::InvalidOptions(
                "IndependentServers::start needs at least one server".into(),
            ));
        }
        Ok(IndependentServers {
            servers: start_many(n, &opts)?,
        })
    }

    /// The servers, in start order.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// Mutable access to the servers, to kill, restart or pause some of them.
    pub fn servers_mut(&mut self) -> &mut [RedisServer] {
        &mut self.servers
    }

    /// Every server's [`RedisServer::url`], in start order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::url).collect()
    }
}
