//! Synchronous gRPC unary calls over a small HTTP/2 client, without an async runtime.

pub mod h2;

impl h2::Io for Box<dyn h2::Io> {
    fn set_timeout(&self, timeout: std::time::Duration) -> std::io::Result<()> {
        (**self).set_timeout(timeout)
    }

    fn close_write(&mut self) -> std::io::Result<()> {
        (**self).close_write()
    }
}
