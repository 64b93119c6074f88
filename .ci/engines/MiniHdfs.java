// An HDFS on loopback for the tests: Hadoop's MiniDFSCluster (a NameNode and one DataNode in this
// JVM) with WebHDFS, which Beam's hdfs:// file system talks to. Used by .ci/engines/hdfs.sh.
//   java -cp CLASSPATH MiniHdfs DATA_DIR RPC_PORT HTTP_PORT READY_FILE
// Writes READY_FILE (the WebHDFS port) once the cluster takes requests, then runs until killed.
import java.nio.file.Files;
import java.nio.file.Paths;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

public final class MiniHdfs {
  public static void main(String[] args) throws Exception {
    Configuration conf = new Configuration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, args[0]);
    conf.setBoolean("dfs.permissions.enabled", false);  // any --hdfs_user may write
    conf.setBoolean("dfs.webhdfs.enabled", true);
    conf.set("dfs.replication", "1");
    conf.set("dfs.datanode.address", "127.0.0.1:0");
    conf.set("dfs.datanode.http.address", "127.0.0.1:0");
    conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
    MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf)
        .nameNodePort(Integer.parseInt(args[1]))
        .nameNodeHttpPort(Integer.parseInt(args[2]))
        .numDataNodes(1)
        .format(true)
        .build();
    cluster.waitActive();
    Runtime.getRuntime().addShutdownHook(new Thread(cluster::shutdown));
    Files.write(Paths.get(args[3] + ".tmp"), (args[2] + "\n").getBytes());
    Files.move(Paths.get(args[3] + ".tmp"), Paths.get(args[3]));
    Thread.currentThread().join();
  }
}
