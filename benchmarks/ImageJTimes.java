import ij.IJ;
import ij.ImagePlus;

/**
 * Opens each TIFF given as an argument with ImageJ 1.x (IJ.openImage, headless), one after
 * another in this one JVM, and prints one line per file: "OPEN", path, seconds, stack size
 * (tab-separated), or "FAIL" and the path. Run by benchmarks/stack.py without compiling:
 *   java -Djava.awt.headless=true -cp /usr/share/java/ij.jar benchmarks/ImageJTimes.java F...
 */
public class ImageJTimes {
    public static void main(String[] args) {
        for (String path : args) {
            long start = System.nanoTime();
            ImagePlus imp = IJ.openImage(path);
            double seconds = (System.nanoTime() - start) / 1e9;
            if (imp == null) {
                System.out.println("FAIL\t" + path);
                continue;
            }
            System.out.println("OPEN\t" + path + "\t" + seconds + "\t" + imp.getStackSize());
            imp.close();
        }
    }
}
